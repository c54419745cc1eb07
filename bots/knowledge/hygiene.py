"""What in a documentation build is not content: generated pages, site assets, duplicate pages.

Sphinx, MkDocs and Docusaurus write, next to the pages people read, pages that list every name
(`genindex-A.html`), a search page, module indexes, and folders of scripts, styles and search data.
Indexed, they come back as sources: an index page mentions every name once, a JSON search index
mentions every word. Names only generators use are left out wherever they are; names a person might
also use (`assets/`, `search.html`, `*.json`) only inside a build, a folder whose files mark it as
one (`objects.inv`, `searchindex.js`, `sitemap.xml`, `search/search_index.json`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt

# Reasons, worded to follow a count in `bots check`: "32 generated index or search pages".
GENERATED = "generated index or search pages"
ASSET = "site assets (scripts, styles, search data)"
SOURCES = "page sources (Sphinx's copy of each page)"
DUPLICATE = "pages with (nearly) the same text as another"
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

# Near-duplicates: pages sharing this share of their 5-term shingles (Jaccard) count as one.
NEAR_DUPLICATE = 0.9
SHINGLE_WORDS = 5
SIGNATURE_SIZE = 64
_BANDS, _ROWS = 16, 4  # a pair at 0.9 shares a band with p > 0.999, at 0.5 with p = 0.64
_RANGE_BITS = np.uint64(64 - 6)  # the top 6 bits pick one of SIGNATURE_SIZE = 64 ranges
_MIX = np.uint64(1_000_003)
_NONE = np.zeros(0, dtype=np.uint64)
# Pairs whose signatures agree this much are compared exactly. Term ids, hence signatures, vary
# between processes; at 0.7 a pair at 0.9 passes the screen in all but 1 in 10^7 processes.
_SCREEN = 0.7
# A MinHash signature (SIGNATURE_SIZE minimums), and the shingle hashes of a text in order.
Signature = npt.NDArray[np.uint64]
Shingles = npt.NDArray[np.uint64]


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


def signature(shingles: Shingles) -> Signature | None:
    """The MinHash signature of a document's shingles, or None when it has none: one-permutation
    hashing, the least hash in each of SIGNATURE_SIZE ranges of hash values (one pass)."""
    if not len(shingles):
        return None
    lowest = np.full(SIGNATURE_SIZE, np.iinfo(np.uint64).max, dtype=np.uint64)
    np.minimum.at(lowest, (shingles >> _RANGE_BITS).astype(np.intp), shingles)
    return lowest


def shingles(term_ids: Sequence[Sequence[int]]) -> Shingles:
    """A hash per run of SHINGLE_WORDS terms of a document (its chunks' index terms, stemmed and
    without stopwords: blind to case, white space and small words); one run of all of them when
    there are fewer."""
    ids = np.concatenate([np.asarray(ids, dtype=np.uint64) for ids in term_ids] or [_NONE])
    width = min(SHINGLE_WORDS, len(ids))
    count = len(ids) - width + 1 if width else 0
    combined = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(width):
            combined = combined * _MIX + ids[offset : offset + count]
        # splitmix64's finaliser: term ids are small, dense numbers; MinHash wants random bits.
        combined ^= combined >> np.uint64(30)
        combined *= np.uint64(0xBF58476D1CE4E5B9)
        combined ^= combined >> np.uint64(27)
        combined *= np.uint64(0x94D049BB133111EB)
        combined ^= combined >> np.uint64(31)
    return combined


def duplicates(
    signatures: dict[str, Signature | None], shingles_of: Callable[[str], Shingles]
) -> dict[str, str]:
    """Each path whose text is (nearly) that of another path -> the path kept in its place.

    Near: at least NEAR_DUPLICATE of their word shingles are shared (Jaccard), a page copied
    with a changed date, link or typo. Pages whose signatures agree in a whole band are compared;
    that is every such pair but almost never two pages that merely share a template. The page
    kept is the one nearest the root, then the first by name: `index.html` rather than
    `docs/index.html` or `index-copy.html`.
    """
    buckets: dict[tuple[int, bytes], list[str]] = {}
    dropped: dict[str, str] = {}
    for rel in sorted(signatures, key=lambda rel: (rel.count("/"), rel)):
        own = signatures[rel]
        if own is None:
            continue
        bands = [(band, own[band * _ROWS : (band + 1) * _ROWS].tobytes()) for band in range(_BANDS)]
        near = dict.fromkeys(other for key in bands for other in buckets.get(key, ()))
        # The signatures only screen: whether a pair is near enough is settled by the exact share.
        twin = next(
            (
                other
                for other in near
                if float(np.mean(own == signatures[other])) >= _SCREEN
                and _jaccard(shingles_of(rel), shingles_of(other)) >= NEAR_DUPLICATE
            ),
            None,
        )
        if twin is not None:
            dropped[rel] = twin
            continue
        for key in bands:
            buckets.setdefault(key, []).append(rel)
    return dropped


def _jaccard(one: Shingles, other: Shingles) -> float:
    a, b = np.unique(one), np.unique(other)
    shared = len(np.intersect1d(a, b, assume_unique=True))
    return shared / (len(a) + len(b) - shared)
