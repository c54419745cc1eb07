"""What in a documentation build is not content: generated pages, site assets, duplicate pages.

Sphinx, MkDocs and Docusaurus write, next to the pages people read, pages that list every name
(`genindex-A.html`), a search page, module indexes, and folders of scripts, styles and search data.
Indexed, they come back as sources: an index page mentions every name once, a JSON search index
mentions every word. Names only generators use are left out wherever they are; names a person might
also use (`assets/`, `search.html`, `*.json`) only inside a build, a folder whose files mark it as
one (`objects.inv`, `searchindex.js`, `sitemap.xml`, `search/search_index.json`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from bots.knowledge.model import Chunk

# Reasons, worded to follow a count in `bots check`: "32 generated index or search pages".
GENERATED = "generated index or search pages"
ASSET = "site assets (scripts, styles, search data)"
SOURCES = "page sources (Sphinx's copy of each page)"
DUPLICATE = "pages with the same text as another"
EXCLUDED = "excluded by knowledge.yaml"

# Folders only generators write: Sphinx's assets, page sources and images.
_GENERATOR_FOLDERS = {"_static": ASSET, "_sources": SOURCES, "_images": ASSET}
# Folders of a site build that hold its machinery (MkDocs `search/`, Docusaurus `assets/`).
_BUILD_FOLDERS = {"assets": ASSET, "search": ASSET, "static": ASSET, "_next": ASSET}
# Sphinx's general index (one page, or one per letter) and its language-specific module indexes.
_GENERATED_PAGE = re.compile(r"(genindex(-[^/]*)?|[a-z]+-modindex)\.html?", re.IGNORECASE)
_BUILD_PAGES = frozenset({"search.html", "404.html", "search_index.json"})
# A build root holds one of these: Sphinx's inventory and search index, a sitemap (MkDocs,
# Docusaurus and most generators write one).
_BUILD_MARKERS = frozenset({"objects.inv", "searchindex.js", "sitemap.xml", "sitemap.xml.gz"})


def marks_build(names: Iterable[str]) -> bool:
    """Whether a folder holding files of these names is the root of a site build."""
    return not _BUILD_MARKERS.isdisjoint(names)


def folder_reason(name: str, in_build: bool) -> str | None:
    """Why a folder of this name is not content (None: it may hold content)."""
    reason = _GENERATOR_FOLDERS.get(name)
    if reason is None and in_build:
        reason = _BUILD_FOLDERS.get(name.lower())
    return reason


def file_reason(name: str, in_build: bool) -> str | None:
    """Why a (supported) file of this name is not content (None: it is a page)."""
    if _GENERATED_PAGE.fullmatch(name):
        return GENERATED
    if in_build:
        lowered = name.lower()
        if lowered in _BUILD_PAGES:
            return GENERATED
        if lowered.endswith(".json"):
            return ASSET  # a build's JSON is its data (search index, manifests), not a page
    return None


def fingerprint(chunks: Iterable[Chunk]) -> str:
    """A digest of a document's words, blind to case and white space; "" when it has none."""
    digest = hashlib.blake2b(digest_size=16)
    empty = True
    for chunk in chunks:
        for word in chunk.text.lower().split():
            digest.update(word.encode())
            digest.update(b" ")
            empty = False
    return "" if empty else digest.hexdigest()


def duplicates(fingerprints: dict[str, str]) -> dict[str, str]:
    """Each path whose text another path has too -> the path kept in its place.

    The page kept is the one nearest the root, then the first by name: `index.html` rather than
    `docs/index.html` or `index-copy.html`.
    """
    kept: dict[str, str] = {}
    dropped: dict[str, str] = {}
    for rel in sorted(fingerprints, key=lambda rel: (rel.count("/"), rel)):
        digest = fingerprints[rel]
        if not digest:
            continue
        if digest in kept:
            dropped[rel] = kept[digest]
        else:
            kept[digest] = rel
    return dropped
