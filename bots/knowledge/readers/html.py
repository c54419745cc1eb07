"""HTML: the page's main text, without navigation, sidebars, footers or scripts.

Parsed with lxml (libxml2's forgiving HTML parser). BeautifulSoup builds the same tree about
20 times slower (2.5 MB/s against 50 MB/s on Python's documentation), which turned indexing a
530-page manual from seconds into half a minute.
"""

from __future__ import annotations

import lxml.etree
import lxml.html

from bots.knowledge.model import Document
from bots.knowledge.readers._common import DocumentError, SectionCollector

# Page chrome: site navigation (a <header> inside <main> or <article> holds the title: kept), sidebars, footers, and what is not text at all. The `div` classes
# are Sphinx's (the relations bar, the sidebar, the footer) and the pilcrow links after headings.
_CHROME_XPATH = (
    "//nav | //header[not(ancestor::main or ancestor::article)] | //footer | //aside | //script | //style | //noscript | //template"
    " | //form | //button | //iframe | //svg"
    " | //*[@role='navigation' or @role='search' or @role='banner' or @role='contentinfo']"
    " | //div[contains(concat(' ', normalize-space(@class), ' '), ' related ')]"
    " | //div[contains(concat(' ', normalize-space(@class), ' '), ' sphinxsidebar ')]"
    " | //div[contains(concat(' ', normalize-space(@class), ' '), ' footer ')]"
    " | //a[contains(concat(' ', normalize-space(@class), ' '), ' headerlink ')]"
)
# Where the page's own text lives, most specific first; the whole <body> when none is marked.
_MAIN_XPATHS = (
    "//main",
    "//*[@role='main']",
    "//div[contains(concat(' ', normalize-space(@class), ' '), ' body ')]",
    "//article",
    "//body",
)
_HEADING_LEVELS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "blockquote", "caption", "dd", "details", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "hr", "li", "main", "ol", "p", "section", "summary",
        "table", "tbody", "tfoot", "thead", "tr", "ul", "br",
    }
)  # fmt: skip
_CELL_TAGS = frozenset({"td", "th"})


def read_html(data: bytes, fallback_title: str) -> Document:
    """Read an HTML page; the title is its first <h1>, else <title>."""
    if not data.strip():
        return Document(title=fallback_title, sections=())
    try:
        root = lxml.html.document_fromstring(data, parser=_parser_for(data))
    except (lxml.etree.ParserError, ValueError) as error:
        raise DocumentError(f"not a readable HTML page: {error}") from error
    page_title = " ".join((root.findtext(".//title") or "").split())
    for element in root.xpath(_CHROME_XPATH):
        if element.getparent() is not None:
            element.drop_tree()
    main = next((found[0] for xpath in _MAIN_XPATHS if (found := root.xpath(xpath))), root)
    text = _TextWalker()
    text.walk(main)
    collector = text.finish()
    return collector.document(collector.first_heading or page_title or fallback_title)


def _parser_for(data: bytes) -> lxml.html.HTMLParser:
    """A parser told the encoding when the bytes are UTF-8; libxml2 would guess Latin-1 for a
    page without a <meta charset>. Made per call: lxml parsers must not be shared by threads."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return lxml.html.HTMLParser()
    return lxml.html.HTMLParser(encoding="utf-8")


class _TextWalker:
    """Turns an element tree into headings and paragraphs, in document order."""

    def __init__(self) -> None:
        self.collector = SectionCollector()
        self._inline: list[str] = []

    def walk(self, element: lxml.html.HtmlElement) -> None:
        """Emit the text of `element` and its children (not its tail)."""
        tag = element.tag if isinstance(element.tag, str) else ""
        if not tag:  # a comment or processing instruction: only its tail is text
            return
        if tag in _HEADING_LEVELS:
            self._break()
            self.collector.heading(_HEADING_LEVELS[tag], element.text_content())
            return
        if tag == "pre":
            self._break()
            self.collector.paragraph(element.text_content().rstrip())
            return
        block = tag in _BLOCK_TAGS
        if block:
            self._break()
        if element.text:
            self._inline.append(element.text)
        for child in element:
            self.walk(child)
            if child.tail:
                self._inline.append(child.tail)
        if block:
            self._break()
        elif tag in _CELL_TAGS:
            self._inline.append(" ")

    def finish(self) -> SectionCollector:
        """Flush the last paragraph and hand over the sections."""
        self._break()
        return self.collector

    def _break(self) -> None:
        if self._inline:
            self.collector.paragraph(" ".join("".join(self._inline).split()))
            self._inline = []
