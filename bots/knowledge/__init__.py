"""Knowledge: documents in a folder -> heading-aware chunks -> BM25 indexes -> hits for a prompt.

`KnowledgeBase` owns every index of a process; `KnowledgeBase.retriever()` gives the chat side a
`Retriever` over one persona's folder and its shared libraries.
"""

from bots.knowledge.index import KnowledgeIndex
from bots.knowledge.library import (
    KnowledgeBase,
    KnowledgeError,
    MergedRetriever,
    UnknownLibrary,
    UnknownPersona,
)
from bots.knowledge.model import (
    GROUNDING_MIN_SCORE,
    Hit,
    IndexStats,
    RefreshResult,
    Retriever,
)
from bots.knowledge.scan import MAX_DOCUMENT_BYTES

__all__ = [
    "GROUNDING_MIN_SCORE",
    "MAX_DOCUMENT_BYTES",
    "Hit",
    "IndexStats",
    "KnowledgeBase",
    "KnowledgeError",
    "KnowledgeIndex",
    "MergedRetriever",
    "RefreshResult",
    "Retriever",
    "UnknownLibrary",
    "UnknownPersona",
]
