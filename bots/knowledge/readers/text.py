"""Plain text: one section of paragraphs; the title is the file name."""

from __future__ import annotations

from bots.knowledge.model import Document, Section
from bots.knowledge.readers._common import decode_text, paragraphs_of


def read_text(data: bytes, fallback_title: str) -> Document:
    """Read a plain text file."""
    paragraphs = paragraphs_of(decode_text(data))
    sections = (Section(heading="", text="\n\n".join(paragraphs)),) if paragraphs else ()
    return Document(title=fallback_title, sections=sections)
