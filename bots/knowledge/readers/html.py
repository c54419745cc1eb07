"""HTML: the page's main text, without navigation, sidebars, footers or scripts.

Parsed with lxml (libxml2's forgiving HTML parser). BeautifulSoup builds the same tree about
20 times slower (2.5 MB/s against 50 MB/s on Python's documentation): indexing that 530-page
manual took about 25 seconds with it, 6 without.
"""

from __future__ import annotations

import lxml.etree

from bots.knowledge.model import Document
from bots.knowledge.readers._common import DocumentError, SectionCollector

# Page chrome: site navigation, sidebars, footers, what is not text at all, Sphinx's relations
# bar, sidebar and footer, and the pilcrow links it puts after headings. A <header> inside <main>
# or <article> holds the title and is kept. Matched in Python over `iter(tags)`: the same test as
# one XPath expression with class predicates took three times as long as parsing the page.
_CHROME_TAGS = frozenset(
    {"nav", "footer", "aside", "script", "style", "noscript", "template", "form", "button",
     "iframe", "svg", "header"}
)  # fmt: skip
_CHROME_CLASSES = {
    "div": frozenset({"related", "sphinxsidebar", "footer"}),
    "a": frozenset({"headerlink"}),
}
_CHROME_ROLES = frozenset({"navigation", "search", "banner", "contentinfo"})
_WITH_ROLE = lxml.etree.XPath("//*[@role]")
# Where the page's own text lives, most specific first; the whole page when none is marked.
_MAIN = tuple(
    lxml.etree.XPath(xpath)
    for xpath in (
        "//main",
        "//*[@role='main']",
        "//div[contains(concat(' ', normalize-space(@class), ' '), ' body ')]",
        "//article",
        "//body",
    )
)
_HEADING_LEVELS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
# Elements whose whole subtree is a run of words inside a paragraph: their text is taken in
# one C call instead of walking them element by element (most of a manual's markup is these).
_INLINE_TAGS = frozenset(
    {
        "a", "abbr", "acronym", "b", "bdi", "bdo", "big", "cite", "code", "data", "del", "dfn",
        "em", "font", "i", "img", "ins", "kbd", "label", "mark", "nobr", "q", "s", "samp",
        "small", "span", "strike", "strong", "sub", "sup", "time", "tt", "u", "var", "wbr",
    }
)  # fmt: skip
_CELL_TAGS = frozenset({"td", "th"})


def read_html(data: bytes, fallback_title: str) -> Document:
    """Read an HTML page; the title is its first <h1>, else <title>."""
    try:
        root = lxml.etree.fromstring(data, _parser_for(data))
    except lxml.etree.LxmlError as error:
        raise DocumentError(f"not a readable HTML page: {error}") from error
    if root is None:  # nothing but white space
        return Document(title=fallback_title, sections=())
    page_title = " ".join((root.findtext(".//title") or "").split())
    for element in _chrome(root):
        parent = element.getparent()
        if parent is not None:
            _drop_keeping_tail(element, parent)
    main = next((found[0] for xpath in _MAIN if (found := xpath(root))), root)
    walker = _TextWalker()
    walker.walk(main)
    collector = walker.finish()
    return collector.document(collector.first_heading or page_title or fallback_title)


def _chrome(root: lxml.etree._Element) -> list[lxml.etree._Element]:
    """The elements of `root` that are page chrome (removing one inside another is harmless)."""
    found = [
        element for element in root.iter(*_CHROME_TAGS, *_CHROME_CLASSES) if _is_chrome(element)
    ]
    found.extend(element for element in _WITH_ROLE(root) if element.get("role") in _CHROME_ROLES)
    return found


def _is_chrome(element: lxml.etree._Element) -> bool:
    tag = element.tag
    if tag in _CHROME_CLASSES:
        return not _CHROME_CLASSES[str(tag)].isdisjoint((element.get("class") or "").split())
    if tag == "header":
        return not any(a.tag in ("main", "article") for a in element.iterancestors())
    return True


def _parser_for(data: bytes) -> lxml.etree.HTMLParser:
    """A parser told the encoding when the bytes are UTF-8; libxml2 would guess Latin-1 for a
    page without a <meta charset>. Made per call: lxml parsers must not be shared by threads."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return lxml.etree.HTMLParser()
    return lxml.etree.HTMLParser(encoding="utf-8")


def _drop_keeping_tail(element: lxml.etree._Element, parent: lxml.etree._Element) -> None:
    """Remove an element and its subtree, keeping the text that follows it."""
    if element.tail:
        previous = element.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + element.tail
        else:
            parent.text = (parent.text or "") + element.tail
    parent.remove(element)


class _TextWalker:
    """Turns an element tree into headings and paragraphs, in document order."""

    def __init__(self) -> None:
        self.collector = SectionCollector()
        self._inline: list[str] = []

    def walk(self, element: lxml.etree._Element) -> None:
        """Emit the text of `element` and its children (not its tail)."""
        tag = element.tag
        if not isinstance(tag, str):  # a comment or processing instruction: no text of its own
            return
        if tag in _INLINE_TAGS:
            self._inline.extend(element.itertext())
            return
        if tag in _HEADING_LEVELS:
            self._break()
            self.collector.heading(_HEADING_LEVELS[tag], "".join(element.itertext()))
            return
        if tag == "pre":
            self._break()
            self.collector.paragraph("".join(element.itertext()).rstrip())
            return
        cell = tag in _CELL_TAGS
        if not cell:
            self._break()
        if element.text:
            self._inline.append(element.text)
        for child in element:
            self.walk(child)
            if child.tail:
                self._inline.append(child.tail)
        if cell:
            self._inline.append(" ")
        else:
            self._break()

    def finish(self) -> SectionCollector:
        """Flush the last paragraph and hand over the sections."""
        self._break()
        return self.collector

    def _break(self) -> None:
        if self._inline:
            self.collector.paragraph(" ".join("".join(self._inline).split()))
            self._inline = []
