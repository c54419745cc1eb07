"""Lexical retrieval: English tokens (stemmed, stopwords dropped) and the identifiers, flags and
operators of technical text, scored with BM25 by `bm25s`."""

from __future__ import annotations

import logging
import math
import re
import threading
import unicodedata
from collections.abc import Sequence

import bm25s
import numpy as np
import numpy.typing as npt
import Stemmer
from bm25s.stopwords import STOPWORDS_EN_PLUS

# bm25s sets its logger to DEBUG, so every index build would reach the application's handlers.
logging.getLogger("bm25s").setLevel(logging.WARNING)

BM25_K1 = 1.5
BM25_B = 0.75

# Letters and digits; "_" and "." split too, so `follow_symlinks` and `os.stat` match the words.
_WORD = re.compile(r"[^\W_]+")
# Besides their words, whole: command-line flags (`--verbose`, `-m`), dotted names (`os.path.join`,
# also indexed as `os.path`), snake_case names, and runs of operator characters (kept if listed
# in _OPERATORS: "://" of a URL or the "-" of a dash is no operator). Not stemmed, never stopwords.
_COMPOUND = re.compile(
    r"(?<![\w.-])(--?[^\W\d_][\w-]*|[^\W\d][\w]*(?:\.[^\W\d]\w*)+|\w*_\w+)|([-+*/%@<>=!:&|^~]+)"
)
_OPERATORS = frozenset(
    {"//", "**", ":=", "->", "==", "!=", "<=", ">=", "<<", ">>", "+=", "-=", "*=", "/=", "//=",
     "%=", "**=", "@=", "&=", "|=", "^=", ">>=", "<<=", "@", "%", "~", "|", "&", "^"}
)  # fmt: skip
# NLTK's English list (bm25s ships it) and the fillers of spoken questions. Lucene's shorter list
# keeps "how", "do", "I", "my": in a small folder such words are unseen, weigh as much as the
# rarest term, and drag the score of a well-answered question under any useful threshold.
_STOPWORDS = frozenset(STOPWORDS_EN_PLUS) | {
    "could", "would", "might", "must", "shall", "get", "gets", "got", "many", "much",
    "please", "tell", "also", "us", "use", "using", "instead", "need", "want", "know",
    "someone", "something", "way", "best", "good",
}  # fmt: skip
# PyStemmer's stemmers keep a cache and are not safe to share between threads.
_local = threading.local()


def _fold(text: str) -> str:
    """Lower-case without accents, so "crepes" finds "Crêpes" and "cafe" finds "café"."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def tokenize(text: str) -> list[str]:
    """The index terms of `text`: lower-cased words without stopwords, Snowball-stemmed, then
    its flags, dotted and snake_case names and operators whole (see _COMPOUND)."""
    folded = _fold(text)
    words = [word for word in _WORD.findall(folded) if word not in _STOPWORDS]
    stemmer: Stemmer.Stemmer | None = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = _local.stemmer = Stemmer.Stemmer("english")
    terms: list[str] = stemmer.stemWords(words)
    for name, operator in _COMPOUND.findall(folded):
        if operator:
            if operator in _OPERATORS:
                terms.append(operator)
        elif "." in name and not name.startswith("-"):
            parts = name.split(".")
            terms.extend(".".join(parts[:end]) for end in range(2, len(parts) + 1))
        else:
            terms.append(name)
    return terms


def is_compound(term: str) -> bool:
    """Whether a term is a whole flag, name or operator (its words are terms of their own)."""
    return not term.isalnum()


class Vocabulary:
    """Term -> id, shared by all builds of one index so cached token ids stay valid.

    Ids are never reused; terms that disappear keep theirs (a column of zeros in the matrix),
    which costs a few bytes per term ever seen and saves re-numbering every chunk on each build.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def ids(self, terms: Sequence[str]) -> list[int]:
        """The ids of `terms`, adding the new ones."""
        ids = self._ids
        found = [ids.get(term, -1) for term in terms]
        if -1 in found:  # rare after the first build: most terms are known
            found = [ids.setdefault(term, len(ids)) for term in terms]
        return found

    def snapshot(self) -> dict[str, int]:
        """A copy that a built index can keep while the original grows."""
        return dict(self._ids)


class LexicalIndex:
    """An immutable BM25 index over chunks given as lists of term ids.

    Searching is safe from any number of threads: nothing changes after construction.
    """

    def __init__(
        self,
        chunk_term_ids: list[list[int]],
        vocabulary: Vocabulary,
        weights: Sequence[float] | None = None,
    ) -> None:
        self._vocabulary = vocabulary.snapshot()
        self._chunks = len(chunk_term_ids)
        # Per chunk, what its score is multiplied by (see ranking.document_weight).
        self._weights = None if weights is None else np.asarray(weights, dtype=np.float32)
        self._bm25: bm25s.BM25 | None = None
        self._document_frequency = np.zeros(0, dtype=np.int64)
        if self._chunks:
            bm25 = bm25s.BM25(k1=BM25_K1, b=BM25_B, method="lucene")
            bm25.index(
                (chunk_term_ids, self._vocabulary),
                create_empty_token=False,
                show_progress=False,
            )
            self._bm25 = bm25
            # In the CSC score matrix a term's column holds one entry per chunk containing it.
            self._document_frequency = np.diff(bm25.scores["indptr"])

    def __len__(self) -> int:
        return self._chunks

    def search(
        self,
        query_terms: Sequence[str],
        k: int,
        hidden: npt.NDArray[np.intp] | None = None,
    ) -> list[tuple[int, float]]:
        """The `k` best (chunk number, score) pairs with a score above 0, best first, leaving
        out the chunk numbers in `hidden`.

        The score is BM25 (Lucene variant) divided by what a chunk of average length containing
        each distinct query term once would score: sum of idf(t) / (1 + k1). A query term the
        index has never seen counts in that sum with the idf of a term in no chunk, the highest
        there is, so a question about something absent from the documents scores low even
        when a common word of it matches; an unseen compound term (`os.path`, `//`) does not
        count, its words do. The score is then multiplied by the chunk's weight. Scores so
        normalised mean the same across indexes of
        different sizes and can be compared, merged and held against a fixed threshold.
        """
        terms = list(dict.fromkeys(query_terms))
        if self._bm25 is None or not terms or k <= 0:
            return []
        known = [t for t in terms if t in self._vocabulary]
        ids = [self._vocabulary[t] for t in known]
        frequencies = [int(self._document_frequency[i]) for i in ids]
        unseen = sum(1 for t in terms if t not in self._vocabulary and not is_compound(t))
        unseen += sum(
            1 for t, f in zip(known, frequencies, strict=True) if not f and not is_compound(t)
        )
        weight = sum(self._idf(f) for f in frequencies if f) + unseen * self._idf(0)
        present = [i for i, f in zip(ids, frequencies, strict=True) if f]
        if not present:
            return []
        scores = self._bm25.get_scores_from_ids(present) * ((1 + BM25_K1) / weight)
        if self._weights is not None:
            scores = scores * self._weights
        if hidden is not None:
            scores[hidden] = 0.0
        top = min(k, self._chunks)
        best = np.argpartition(-scores, top - 1)[:top]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [(int(i), float(scores[i])) for i in best if scores[i] > 0]

    def _idf(self, document_frequency: int) -> float:
        """Lucene's idf, the one bm25s uses for method="lucene"."""
        n = self._chunks
        return math.log(1 + (n - document_frequency + 0.5) / (document_frequency + 0.5))
