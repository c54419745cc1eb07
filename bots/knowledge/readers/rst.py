"""reStructuredText: section titles are underlined (optionally overlined) with punctuation.

Heading levels follow the order in which the underline styles first appear, as docutils does.
Inline roles and directive markers are reduced to their text, so `:func:`os.stat`` reads as
`os.stat` and `.. function:: stat(path)` as `stat(path)`.
"""

from __future__ import annotations

import re

from bots.knowledge.model import Document
from bots.knowledge.readers._common import SectionCollector, decode_text

_ADORNMENT = re.compile(r"^([!-/:-@\[-`{-~])\1+\s*$")
_ROLE_WITH_TARGET = re.compile(r":[\w.+-]+(?::[\w.+-]+)*:`([^`<]*?)\s*<[^`>]*>`")
_ROLE = re.compile(r":[\w.+-]+(?::[\w.+-]+)*:`([^`]*)`")
_LITERAL = re.compile(r"``([^`]+)``")
_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+[\w:.-]+::\s?")
_TARGET = re.compile(r"^\s*\.\.\s+_[^:]*:.*$")
_OPTION = re.compile(r"^(\s+):[\w-]+:(\s|$)")


def read_rst(data: bytes, fallback_title: str) -> Document:
    """Read reStructuredText; the title is the first section title."""
    lines = decode_text(data).splitlines()
    collector = SectionCollector()
    styles: list[tuple[str, bool]] = []
    paragraph: list[str] = []

    def flush() -> None:
        collector.paragraph("\n".join(paragraph))
        paragraph.clear()

    def heading(text: str, style: tuple[str, bool]) -> None:
        flush()
        if style not in styles:
            styles.append(style)
        collector.heading(styles.index(style) + 1, _clean(text))

    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        following = lines[i + 1].rstrip() if i + 1 < len(lines) else ""
        after = lines[i + 2].rstrip() if i + 2 < len(lines) else ""
        over = _ADORNMENT.match(line)
        if over and following.strip() and after == line and not paragraph:
            heading(following.strip(), (line[0], True))
            i += 3
            continue
        under = _ADORNMENT.match(following)
        if (
            line.strip()
            and not line[0].isspace()
            and under
            and not paragraph
            and len(following) >= len(line)
        ):
            heading(line.strip(), (following[0], False))
            i += 2
            continue
        if not line.strip():
            flush()
        elif not _TARGET.match(line) and not over:
            paragraph.append(_clean(line))
        i += 1
    flush()
    return collector.document(collector.first_heading or fallback_title)


def _clean(line: str) -> str:
    """Reduce inline markup to the text a reader sees."""
    line = _DIRECTIVE.sub(r"\1", line)
    line = _OPTION.sub(r"\1", line)
    line = _ROLE_WITH_TARGET.sub(r"\1", line)
    line = _ROLE.sub(r"\1", line)
    return _LITERAL.sub(r"\1", line)
