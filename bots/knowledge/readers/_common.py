"""Helpers shared by the readers: text decoding and collecting sections under headings."""

from __future__ import annotations

from bots.knowledge.model import Document, Section

HEADING_SEPARATOR = " > "


class DocumentError(ValueError):
    """A file could not be turned into text; the message says why (the index adds the path)."""


def decode_text(data: bytes) -> str:
    """Decode a text file: UTF-8 (with or without a byte order mark), else Windows-1252."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # cp1252 is the usual encoding of text that is not UTF-8; bytes it lacks become U+FFFD.
        return data.decode("cp1252", errors="replace")


class SectionCollector:
    """Builds sections from a stream of headings and paragraphs in reading order.

    Each section is labelled with its heading trail ("Install > Linux"), so a chunk from a deep
    section still says where it sits in the document.
    """

    def __init__(self) -> None:
        self._trail: list[tuple[int, str]] = []
        self._paragraphs: list[str] = []
        self._sections: list[Section] = []
        self.first_heading = ""  # readers use it as the title when the file names none

    def heading(self, level: int, text: str) -> None:
        """Start a new section under a heading of `level` (1 is the outermost)."""
        text = " ".join(text.split())
        if not text:
            return
        self._flush()
        if not self.first_heading:
            self.first_heading = text
        while self._trail and self._trail[-1][0] >= level:
            self._trail.pop()
        self._trail.append((level, text))

    def paragraph(self, text: str) -> None:
        """Add a paragraph to the current section; blank ones are dropped."""
        if text.strip():
            self._paragraphs.append(text.strip("\n"))

    def document(self, title: str) -> Document:
        """Finish: the sections collected so far, with the title left off their heading trails."""
        self._flush()
        prefix = title + HEADING_SEPARATOR
        sections = []
        for section in self._sections:
            heading = section.heading
            if heading == title:
                heading = ""
            elif heading.startswith(prefix):
                heading = heading[len(prefix) :]
            sections.append(Section(heading=heading, text=section.text))
        return Document(title=title, sections=tuple(sections))

    def _flush(self) -> None:
        if self._paragraphs:
            heading = HEADING_SEPARATOR.join(text for _, text in self._trail)
            self._sections.append(Section(heading=heading, text="\n\n".join(self._paragraphs)))
            self._paragraphs = []


def paragraphs_of(text: str) -> list[str]:
    """Split plain text into paragraphs at blank lines, keeping the lines inside each."""
    paragraphs: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip():
            current.append(line.rstrip())
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    if current:
        paragraphs.append("\n".join(current))
    return paragraphs
