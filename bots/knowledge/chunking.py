"""Cut documents into prompt-sized chunks that follow the headings, with some overlap.

A chunk holds 200-250 words: enough context for the model, small enough that four fit in a prompt
beside the instructions. A new section starts a new chunk unless the chunk so far is shorter than
CHUNK_MIN_WORDS (a run of tiny sections is kept together, each under its own heading line). A long
section is cut at paragraph, then line, then word boundaries, and each continuation repeats the
last CHUNK_OVERLAP_WORDS words of the chunk before it, so a sentence cut in two is whole in one.
"""

from __future__ import annotations

from dataclasses import dataclass

from bots.knowledge.model import Chunk, Document
from bots.knowledge.readers._common import HEADING_SEPARATOR, paragraphs_of

CHUNK_TARGET_WORDS = 200
CHUNK_MAX_WORDS = 250
CHUNK_OVERLAP_WORDS = 40
CHUNK_MIN_WORDS = 60


@dataclass(frozen=True)
class _Piece:
    """A paragraph, line or run of words, with the separator that goes before it."""

    text: str
    words: int
    separator: str


def chunk_document(path: str, document: Document) -> list[Chunk]:
    """Cut `document` (found at `path`, relative to the index root) into chunks."""
    builder = _ChunkBuilder(path, document.title)
    for section in document.sections:
        pieces = _pieces(section.text)
        if not pieces:
            continue
        if builder.fresh_words >= CHUNK_MIN_WORDS:
            builder.emit(overlap=False)
        elif builder.fresh_words and section.heading:
            # Too short to stand alone: this section joins the chunk, under its own heading.
            label = section.heading.rsplit(HEADING_SEPARATOR, 1)[-1]
            builder.add(_Piece(label, len(label.split()), "\n\n"), section.heading)
        for piece in pieces:
            if builder.fresh_words and (
                builder.words + piece.words > CHUNK_MAX_WORDS or builder.words >= CHUNK_TARGET_WORDS
            ):
                builder.emit(overlap=True)
            builder.add(piece, section.heading)
    builder.emit(overlap=False)
    return builder.chunks


class _ChunkBuilder:
    """Accumulates pieces into the current chunk and emits finished chunks."""

    def __init__(self, path: str, title: str) -> None:
        self.path = path
        self.title = title
        self.chunks: list[Chunk] = []
        self.words = 0
        self.fresh_words = 0  # words not repeated from the chunk before
        self._pieces: list[_Piece] = []
        self._heading = ""

    def add(self, piece: _Piece, heading: str) -> None:
        """Append a piece; the first new piece of a chunk gives the chunk its heading."""
        if not self.fresh_words:
            self._heading = heading
        self._pieces.append(piece)
        self.words += piece.words
        self.fresh_words += piece.words

    def emit(self, *, overlap: bool) -> None:
        """Finish the current chunk; with `overlap` the next one starts with its last words."""
        if not self.fresh_words:
            return
        text = "".join(
            (piece.separator if i else "") + piece.text for i, piece in enumerate(self._pieces)
        )
        self.chunks.append(
            Chunk(
                path=self.path,
                title=self.title,
                heading=self._heading,
                text=text,
                position=len(self.chunks),
            )
        )
        self._pieces = []
        self.words = self.fresh_words = 0
        if overlap:
            tail = text.split()[-CHUNK_OVERLAP_WORDS:]
            self._pieces.append(_Piece(" ".join(tail), len(tail), ""))
            self.words = len(tail)


def _pieces(text: str) -> list[_Piece]:
    """Split section text into pieces no longer than CHUNK_MAX_WORDS."""
    pieces: list[_Piece] = []
    for paragraph in paragraphs_of(text):
        words = len(paragraph.split())
        if words <= CHUNK_MAX_WORDS:
            pieces.append(_Piece(paragraph, words, "\n\n"))
            continue
        separator = "\n\n"
        for line in paragraph.splitlines():
            line_words = line.split()
            if len(line_words) <= CHUNK_MAX_WORDS:
                pieces.append(_Piece(line, len(line_words), separator))
            else:
                for start in range(0, len(line_words), CHUNK_TARGET_WORDS):
                    run = line_words[start : start + CHUNK_TARGET_WORDS]
                    pieces.append(_Piece(" ".join(run), len(run), separator if not start else " "))
            separator = "\n"
    return pieces
