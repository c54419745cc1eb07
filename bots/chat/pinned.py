"""Pinned documents: read whole from a persona's folder or its libraries, and fitted to the
knowledge budget of every prompt.

A persona names them in `pinned:` as its sources show them: `policies/leave.md` in its own
folder, `acme-handbook/vacation.md` in a library it names in `knowledge:`. The loader reads them
through `PinnedReader` (so a missing or unreadable one is an error on its line) and keeps their
text in the snapshot. Whether they fit is counted with the model's tokenizer, against
`retrieval.max_knowledge_tokens`, exactly as the prompt builder counts them; where no model is
loaded (`bots check`), that part of the check waits for one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bots.chat.prompt import DOCUMENT_OVERHEAD_TOKENS
from bots.engine.base import EngineError
from bots.knowledge.model import Hit
from bots.knowledge.readers import DocumentError, is_supported, read_document
from bots.knowledge.readers._common import HEADING_SEPARATOR
from bots.knowledge.scan import MAX_DOCUMENT_BYTES, is_ignored_name
from bots.persona.model import PinnedDocument, PinnedProblem


class PinnedReader:
    """Reads pinned documents for the loader and counts what they cost in a prompt."""

    def __init__(
        self,
        knowledge_dir: Path,
        count_tokens: Callable[[str], int] | None,
        budget_tokens: int,
    ) -> None:
        self.knowledge_dir = knowledge_dir
        self.count_tokens = count_tokens
        self.budget_tokens = budget_tokens

    def read(self, folder: Path, libraries: Sequence[str], path: str) -> PinnedDocument:
        """The whole text of the document `path` names (see the module docstring)."""
        library, _, rest = path.partition("/")
        if rest and library in libraries:
            root, rel = self.knowledge_dir / library, rest
        else:
            root, rel = folder, path
        if any(is_ignored_name(part) for part in rel.split("/")):
            raise PinnedProblem("not a knowledge document (persona.md, evals.yaml, hidden files)")
        if not is_supported(rel):
            raise PinnedProblem("not a supported document type")
        file = root / rel
        try:
            real = file.resolve(strict=True)
        except OSError:
            where = f"library {library!r}" if root != folder else "the persona folder"
            raise PinnedProblem(f"no such document in {where}") from None
        if not real.is_relative_to(root.resolve()) or not real.is_file():
            raise PinnedProblem("not a file inside its folder")
        try:
            size = real.stat().st_size
            if size > MAX_DOCUMENT_BYTES:
                raise PinnedProblem(f"{size} bytes; the limit is {MAX_DOCUMENT_BYTES}")
            document = read_document(rel, real.read_bytes())
        except OSError as exc:
            raise PinnedProblem(f"cannot read: {exc.strerror}") from exc
        except DocumentError as exc:
            raise PinnedProblem(f"cannot read: {exc}") from exc
        text = "\n\n".join(
            f"{s.heading.rsplit(HEADING_SEPARATOR, 1)[-1]}\n{s.text}" if s.heading else s.text
            for s in document.sections
        ).strip()
        if not text:
            raise PinnedProblem("the document has no text")
        return PinnedDocument(path, document.title, text)

    def problem(self, documents: Sequence[PinnedDocument]) -> str:
        """Why the documents do not fit in every prompt, or "" (also when nothing can count)."""
        tokens = self.cost(documents)
        if tokens is None or tokens <= self.budget_tokens:
            return ""
        return (
            f"the pinned documents take {tokens} tokens; every prompt has room for "
            f"{self.budget_tokens} (retrieval.max_knowledge_tokens): pin fewer or shorter "
            "documents, or raise the budget"
        )

    def cost(self, documents: Sequence[PinnedDocument]) -> int | None:
        """Tokens the documents take in a prompt; None before a model can count them."""
        if self.count_tokens is None:
            return None
        try:
            return sum(self.count_tokens(d.text) + DOCUMENT_OVERHEAD_TOKENS for d in documents)
        except EngineError:
            return None  # the engine is not started (or is restarting)


def as_hits(documents: Sequence[PinnedDocument]) -> tuple[Hit, ...]:
    """Pinned documents in the shape retrieved chunks have, for the prompt builder."""
    return tuple(
        Hit(path=d.path, title=d.title, heading="", text=d.text, score=1.0, library=None)
        for d in documents
    )
