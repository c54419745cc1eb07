"""The data that crosses the knowledge seam: documents, chunks, hits and index figures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bots.knowledge.audience import EVERYONE, PUBLIC, Access, Reader

# A hit's `score` is the chunk's BM25 score divided by what a chunk of average length holding each
# distinct query term exactly once would score (see `lexical.LexicalIndex.search`). So 1.0 means
# "every query term is here, once"; 0.5 roughly "half the query's weight is here"; terms the index
# has never seen count with the weight of the rarest term, so a question about something the
# documents never mention scores near 0 (or finds nothing). Scores pass 1.0 when terms repeat
# (at most 1 + k1 = 2.5). Stopwords and question fillers ("how", "do", "I", "get") do not count.
#
# A persona with `grounding: strict` should decline when no hit reaches GROUNDING_MIN_SCORE. On the
# test handbook, questions it answers score 0.34 to 1.9, questions about nothing in it find no hit.
# Words alone cannot tell a stray shared word from an answer ("capital of France" meets "capital
# cities" in the expense policy at 0.34), so the threshold only turns away questions that share
# (almost) nothing with the documents; the grounding instructions to the model do the rest.
GROUNDING_MIN_SCORE = 0.3


@dataclass(frozen=True)
class Section:
    """A stretch of a document's text under one heading (`""` before the first heading)."""

    heading: str
    text: str


@dataclass(frozen=True)
class Document:
    """What a reader extracted from one file: its title and its sections in reading order."""

    title: str
    sections: tuple[Section, ...]


@dataclass(frozen=True)
class Chunk:
    """A piece of a document small enough to put into a prompt, with where it came from."""

    path: str  # relative to the index root, "/" separated
    title: str
    heading: str  # the heading trail inside the document, "Install > Linux"; "" for none
    text: str
    position: int  # 0-based order of the chunk within its document


@dataclass(frozen=True)
class Hit:
    """A chunk found for a query."""

    path: str  # relative to the persona folder, or "<library>/<path>" (relative to knowledge/)
    title: str
    heading: str
    text: str
    score: float  # see GROUNDING_MIN_SCORE for what the number means
    library: str | None  # None for the persona's own folder
    access: Access = PUBLIC  # who may see its document (`audience`)


@dataclass(frozen=True)
class Exclusion:
    """A file or folder ("name/") that is not content, and why (one of the `hygiene` reasons)."""

    rel: str
    reason: str
    detail: str = ""  # for a duplicate: the path of the page kept


@dataclass(frozen=True)
class IndexStats:
    """What one index holds.

    `skipped` names each file that should have been indexed but could not, and why (a problem to
    fix); `excluded` lists what was left out on purpose as not content (see `hygiene`).
    """

    documents: int
    chunks: int
    skipped: tuple[str, ...]
    bytes: int = 0  # total size of the indexed documents
    last_refresh_ms: float = 0.0
    excluded: tuple[Exclusion, ...] = ()


@dataclass(frozen=True)
class RefreshResult:
    """What one `KnowledgeIndex.refresh` did.

    `read` counts documents whose text was extracted again; a document whose size or mtime changed
    but whose content hash did not is hashed, counted `unchanged`, and not read.
    """

    added: int
    updated: int
    removed: int
    unchanged: int
    read: int
    duration_ms: float
    skipped: tuple[str, ...] = ()


class Retriever(Protocol):
    """Finds the chunks that best answer a query; what the prompt builder calls."""

    def search(self, query: str, k: int = 4, reader: Reader = EVERYONE) -> list[Hit]:
        """Return at most `k` hits, best first, each scored as GROUNDING_MIN_SCORE describes,
        from documents `reader` may see."""
        ...
