"""What ranking knows about documents beyond their words: fields, release notes, diversity.

- A chunk's title and heading trail are indexed with its text, repeated: a page titled `os.path`
  documents `os.path`, a page whose text mentions it once does not. (A file name counts only as
  the title of a document that has none: a file keeps its name when its subject changes.)
- Release notes (`whatsnew/`, changelogs, NEWS) mention every feature once, in passing, next to
  the words of the question; their chunks score at RELEASE_NOTES_WEIGHT of what they would.
- An answer's sources come from several documents: at most MAX_CHUNKS_PER_DOCUMENT chunks of one
  document among the hits, unless no other document matches at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from bots.knowledge.lexical import tokenize
from bots.knowledge.model import Chunk

# How many times the title, and the heading trail, count against the text once.
# BM25 saturates term frequency (k1 = 1.5): a title word repeated 3 times scores about twice
# what a single mention in the text does, which lets the page about a name outrank pages that
# mention it, without a title word outweighing a whole question answered in the text.
TITLE_REPEAT = 3
HEADING_REPEAT = 2
RELEASE_NOTES_WEIGHT = 0.5
MAX_CHUNKS_PER_DOCUMENT = 2
# Candidates asked of BM25 per hit returned, so the cap per document can still fill `k`.
CANDIDATES_PER_HIT = 5

_RELEASE_PATH = re.compile(
    r"(^|/)(whats-?new|changelog|changes|release-?notes?|news|history)([/._-]|$)"
)
_RELEASE_TITLE = re.compile(r"(what[’']?s new|changelog|change log|release notes)\b")

Item = TypeVar("Item")


def chunk_terms(chunk: Chunk) -> list[str]:
    """The index terms of a chunk: its text, then its heading trail and its title, repeated."""
    title = tokenize(chunk.title)
    heading = tokenize(chunk.heading)
    return [*tokenize(chunk.text), *heading * HEADING_REPEAT, *title * TITLE_REPEAT]


def document_weight(path: str, title: str) -> float:
    """What a document's chunk scores are multiplied by: less for release notes."""
    lowered = path.lower().replace("_", "-")
    if _RELEASE_PATH.search(lowered) or _RELEASE_TITLE.match(title.lower()):
        return RELEASE_NOTES_WEIGHT
    return 1.0


def diversify(
    ranked: Sequence[Item],
    k: int,
    document: Callable[[Item], str],
    score: Callable[[Item], float],
) -> list[Item]:
    """The `k` best of `ranked` (best first) with at most MAX_CHUNKS_PER_DOCUMENT per document;
    when that leaves fewer than `k`, the best of the rest fill in. Returned best first."""
    chosen: list[Item] = []
    held_back: list[Item] = []
    per_document: dict[str, int] = {}
    for item in ranked:
        key = document(item)
        if per_document.get(key, 0) < MAX_CHUNKS_PER_DOCUMENT:
            per_document[key] = per_document.get(key, 0) + 1
            chosen.append(item)
            if len(chosen) == k:
                break
        else:
            held_back.append(item)
    chosen += held_back[: k - len(chosen)]
    return sorted(chosen, key=score, reverse=True)
