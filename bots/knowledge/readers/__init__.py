"""Readers: the bytes of a file in, a `Document` (title and heading-aware sections) out."""

from __future__ import annotations

from collections.abc import Callable

from bots.knowledge.model import Document
from bots.knowledge.readers._common import DocumentError
from bots.knowledge.readers.html import read_html
from bots.knowledge.readers.markdown import read_markdown
from bots.knowledge.readers.pdf import read_pdf
from bots.knowledge.readers.rst import read_rst
from bots.knowledge.readers.tabular import read_csv, read_json
from bots.knowledge.readers.text import read_text

__all__ = ["SUPPORTED_SUFFIXES", "DocumentError", "is_supported", "read_document"]

Reader = Callable[[bytes, str], Document]

_READERS: dict[str, Reader] = {
    ".md": read_markdown,
    ".markdown": read_markdown,
    ".txt": read_text,
    ".rst": read_rst,
    ".html": read_html,
    ".htm": read_html,
    ".pdf": read_pdf,
    ".csv": read_csv,
    ".json": read_json,
}
SUPPORTED_SUFFIXES = frozenset(_READERS)
# Sphinx publishes each page's source as `name.rst.txt`: reStructuredText, not plain text.
_COMPOUND_SUFFIXES: dict[str, Reader] = {".rst.txt": read_rst}


def is_supported(name: str) -> bool:
    """Whether a file name has an extension some reader handles."""
    return _reader_for(name) is not None


def read_document(name: str, data: bytes) -> Document:
    """Extract a document from the bytes of the file called `name`.

    Raises DocumentError when the content cannot be read (a damaged PDF, invalid JSON) and
    ValueError for an unsupported extension.
    """
    reader = _reader_for(name)
    if reader is None:
        raise ValueError(f"{name}: unsupported file type")
    return reader(data, _title_from_name(name))


def _reader_for(name: str) -> Reader | None:
    lowered = name.lower()
    for suffix, reader in _COMPOUND_SUFFIXES.items():
        if lowered.endswith(suffix):
            return reader
    dot = lowered.rfind(".")
    return _READERS.get(lowered[dot:]) if dot > 0 else None


def _title_from_name(name: str) -> str:
    """The title of a document that names none: its file name without the extension."""
    base = name.rsplit("/", 1)[-1]
    lowered = base.lower()
    for suffix in (*_COMPOUND_SUFFIXES, lowered[lowered.rfind(".") :]):
        if lowered.endswith(suffix):
            return base[: -len(suffix)] or base
    return base
