"""PDF: the text of each page, one section per page (PDFs rarely mark their headings)."""

from __future__ import annotations

import io
import logging

import pypdf
from pypdf.errors import PyPdfError

from bots.knowledge.model import Document, Section
from bots.knowledge.readers._common import DocumentError

# pypdf logs a warning for every small flaw of a PDF it can read anyway; they are not ours to fix.
logging.getLogger("pypdf").setLevel(logging.ERROR)


def read_pdf(data: bytes, fallback_title: str) -> Document:
    """Read a PDF; the title is the document's metadata title, else the file name."""
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError("the PDF is encrypted with a password")
        metadata_title = reader.metadata.title if reader.metadata else None
        sections = tuple(
            Section(heading=f"page {number}", text=text.strip())
            for number, page in enumerate(reader.pages, start=1)
            if (text := page.extract_text() or "").strip()
        )
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError) as error:
        # pypdf raises these non-pypdf errors on damaged files too.
        raise DocumentError(f"not a readable PDF: {error}") from error
    title = str(metadata_title).strip() if metadata_title else ""
    return Document(title=title or fallback_title, sections=sections)
