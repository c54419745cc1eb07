"""Markdown: ATX (`# Title`) and setext (underlined) headings; code fences are kept as text."""

from __future__ import annotations

import re

import yaml

from bots.knowledge.model import Document
from bots.knowledge.readers._common import SectionCollector, decode_text

_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)---[ \t]*(?:\n|\Z)", re.DOTALL)


def read_markdown(data: bytes, fallback_title: str) -> Document:
    """Read Markdown; the title is front matter `title:`, else the first heading."""
    text = decode_text(data)
    title = ""
    front = _FRONT_MATTER.match(text)
    if front:
        title = _front_matter_title(front.group(1))
        text = text[front.end() :]

    collector = SectionCollector()
    paragraph: list[str] = []
    fence = ""

    def flush() -> None:
        collector.paragraph("\n".join(paragraph))
        paragraph.clear()

    for line in text.splitlines():
        line = line.rstrip()
        fence_match = _FENCE.match(line)
        if fence:
            paragraph.append(line)
            if fence_match and fence_match.group(1)[0] == fence[0]:
                fence = ""
            continue
        if fence_match:
            fence = fence_match.group(1)
            paragraph.append(line)
            continue
        atx = _ATX_HEADING.match(line)
        if atx:
            flush()
            collector.heading(len(atx.group(1)), atx.group(2) or "")
        elif _SETEXT_UNDERLINE.match(line) and len(paragraph) == 1:
            # A one-line paragraph followed by === or --- is a heading; after a blank line
            # the same --- is a thematic break and is dropped below.
            heading = paragraph.pop()
            collector.heading(1 if line.strip()[0] == "=" else 2, heading)
        elif not line.strip():
            flush()
        elif not _SETEXT_UNDERLINE.match(line) or paragraph:
            paragraph.append(line)
    flush()
    return collector.document(title or collector.first_heading or fallback_title)


def _front_matter_title(block: str) -> str:
    """The `title:` of YAML front matter, or "" when it has none or does not parse."""
    try:
        meta = yaml.safe_load(block)
    except yaml.YAMLError:
        return ""
    if isinstance(meta, dict) and isinstance(meta.get("title"), str):
        return str(meta["title"]).strip()
    return ""
