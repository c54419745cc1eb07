"""`bots bench retrieval`: does the page that answers a question reach the answer's sources?

The persona retrieval (`KnowledgeIndex`: hygiene, chunks, ranking) is measured against a plain
BM25 over whole pages (bm25s with its own English tokenizer, every HTML page, no chunking), both
built in the same run on the same folder, on questions with the pages that answer them.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import bm25s
import Stemmer
import yaml

from bots.knowledge.dense import Fusion
from bots.knowledge.index import KnowledgeIndex
from bots.knowledge.readers import read_document

QUESTIONS_FILE = Path(__file__).parent / "data" / "python_docs_questions.yaml"
# The sources an answer gets: `retrieval.top_k` chunks (the persona) or pages (the baseline).
ANSWER_SOURCES = 4
HIT_AT = 5
# How deep the ranked list of distinct pages goes for the reciprocal rank.
MRR_DEPTH = 10
# Chunks asked for to rank MRR_DEPTH distinct pages (a page may bring several).
_CHUNK_DEPTH = 40
_BASELINE_SUFFIXES = (".html", ".htm")


class BenchError(RuntimeError):
    """The question set or the folder cannot be benchmarked; the message says what to fix."""


@dataclass(frozen=True)
class Question:
    """A question as users ask it and the pages (relative paths) that answer it."""

    text: str
    kind: str
    pages: frozenset[str]


@dataclass(frozen=True)
class Score:
    """One contender's figures over a question set (rates in 0..1)."""

    name: str
    hit_at_1: float
    hit_at_5: float
    mrr: float
    in_answer: float  # the right page among the ANSWER_SOURCES sources of an answer
    index_s: float
    query_p50_ms: float
    query_p95_ms: float
    misses: tuple[str, ...]  # questions whose page is not in the answer's sources
    by_kind: dict[str, float]  # kind -> hit@5


def load_questions(path: Path = QUESTIONS_FILE) -> tuple[Question, ...]:
    """Read a question set: a YAML list of {q, kind, pages}."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise BenchError(f"{path}: expected a list of questions")
    questions = []
    for number, item in enumerate(data, 1):
        if not (
            isinstance(item, dict)
            and isinstance(item.get("q"), str)
            and isinstance(item.get("pages"), list)
            and item["pages"]
            and all(isinstance(page, str) for page in item["pages"])
        ):
            raise BenchError(f"{path}: question {number}: needs q (text) and pages (a list)")
        questions.append(
            Question(item["q"], str(item.get("kind", "plain")), frozenset(item["pages"]))
        )
    return tuple(questions)


def run_retrieval_bench(
    docs: Path, questions: Sequence[Question], *, dense: bool = False
) -> tuple[Score, ...]:
    """Index `docs` cold both ways and score both on `questions`: (persona, baseline).

    With `dense`, also a hybrid index (cold, in its own cache), scored with each fusion:
    (persona, hybrid weighted, hybrid rrf, baseline)."""
    if not docs.is_dir():
        raise BenchError(f"{docs}: not a folder")
    missing = sorted({p for q in questions for p in q.pages if not (docs / p).is_file()})
    if missing:
        raise BenchError(f"{docs}: no such page(s) named by the questions: {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="bots-rbench-") as cache:
        started = time.perf_counter()
        index = KnowledgeIndex(docs, Path(cache))
        index.refresh()
        persona_s = time.perf_counter() - started

        def pages(query: str, chunks: int = _CHUNK_DEPTH) -> list[str]:
            return list(dict.fromkeys(hit.path for hit in index.search(query, chunks)))

        def answer(query: str) -> list[str]:
            return pages(query, ANSWER_SOURCES)

        ours = [_score("bots (persona retrieval)", questions, pages, answer, persona_s)]
    if dense:
        ours += _hybrid_scores(docs, questions)
    started = time.perf_counter()
    baseline = WholePageBM25(docs)
    baseline_s = time.perf_counter() - started
    theirs = _score(
        "plain BM25, whole pages",
        questions,
        baseline.search,
        lambda query: baseline.search(query, ANSWER_SOURCES),
        baseline_s,
    )
    return (*ours, theirs)


def _hybrid_scores(docs: Path, questions: Sequence[Question]) -> list[Score]:
    """The persona retrieval with dense retrieval on, once per fusion, on one cold index."""
    with tempfile.TemporaryDirectory(prefix="bots-rbench-dense-") as cache:
        started = time.perf_counter()
        index = KnowledgeIndex(docs, Path(cache), dense=True)
        index.refresh()
        index_s = time.perf_counter() - started
        scores = []
        fusions: tuple[Fusion, ...] = ("weighted", "rrf")
        for fusion in fusions:
            index.fusion = fusion

            def pages(query: str, chunks: int = _CHUNK_DEPTH) -> list[str]:
                return list(dict.fromkeys(hit.path for hit in index.search(query, chunks)))

            def answer(query: str) -> list[str]:
                return pages(query, ANSWER_SOURCES)

            scores.append(_score(f"bots hybrid ({fusion})", questions, pages, answer, index_s))
        return scores


class WholePageBM25:
    """The baseline: one BM25 document per HTML page, bm25s's English stopwords and stemmer."""

    def __init__(self, docs: Path) -> None:
        self._stemmer = Stemmer.Stemmer("english")
        self.paths: list[str] = []
        texts: list[str] = []
        for folder, _, files in os.walk(docs):
            for name in files:
                if not name.lower().endswith(_BASELINE_SUFFIXES):
                    continue
                path = Path(folder) / name
                document = read_document(name, path.read_bytes())
                parts = [document.title]
                for section in document.sections:
                    parts += [section.heading, section.text]
                self.paths.append(path.relative_to(docs).as_posix())
                texts.append("\n".join(parts))
        if not texts:
            raise BenchError(f"{docs}: no HTML pages for the baseline")
        self._bm25 = bm25s.BM25()
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=self._stemmer, show_progress=False)
        self._bm25.index(tokens, show_progress=False)

    def search(self, query: str, k: int = MRR_DEPTH) -> list[str]:
        """The paths of the `k` best pages, best first."""
        tokens = bm25s.tokenize(query, stopwords="en", stemmer=self._stemmer, show_progress=False)
        if not tokens.vocab:
            return []
        found, scores = self._bm25.retrieve(tokens, k=min(k, len(self.paths)), show_progress=False)
        return [self.paths[i] for i, s in zip(found[0], scores[0], strict=True) if s > 0]


def _score(
    name: str,
    questions: Sequence[Question],
    ranked: Callable[[str], list[str]],
    answer: Callable[[str], list[str]],
    index_s: float,
) -> Score:
    """Hit rates and MRR from `ranked` (distinct pages, best first); latency of `answer`."""
    if not questions:
        raise BenchError("no questions")
    answer(questions[0].text)  # the first search pays for lazy imports and caches
    firsts, fives, reciprocal, answered, latencies = [], [], [], [], []
    misses = []
    for question in questions:
        pages = ranked(question.text)[:MRR_DEPTH]
        rank = next((i for i, page in enumerate(pages, 1) if page in question.pages), 0)
        firsts.append(rank == 1)
        fives.append(0 < rank <= HIT_AT)
        reciprocal.append(1 / rank if rank else 0.0)
        started = time.perf_counter()
        sources = answer(question.text)
        latencies.append((time.perf_counter() - started) * 1000)
        answered.append(bool(question.pages.intersection(sources)))
        if not answered[-1]:
            misses.append(f"{question.text} -> {', '.join(sources) or 'nothing'}")
    kinds = sorted({q.kind for q in questions})
    return Score(
        name=name,
        hit_at_1=statistics.fmean(firsts),
        hit_at_5=statistics.fmean(fives),
        mrr=statistics.fmean(reciprocal),
        in_answer=statistics.fmean(answered),
        index_s=index_s,
        query_p50_ms=statistics.median(latencies),
        query_p95_ms=statistics.quantiles(latencies, n=20, method="inclusive")[-1]
        if len(latencies) > 1
        else latencies[0],
        misses=tuple(misses),
        by_kind={
            kind: statistics.fmean(
                f for f, q in zip(fives, questions, strict=True) if q.kind == kind
            )
            for kind in kinds
        },
    )


def format_table(scores: Sequence[Score], questions: int) -> str:
    """The figures as a Markdown table, one row per contender, then hit@5 per kind."""
    header = (
        f"| retrieval | hit@1 | hit@{HIT_AT} | MRR@{MRR_DEPTH} | in answer ({ANSWER_SOURCES} "
        "sources) | cold index s | query p50 ms | query p95 ms |"
    )
    lines = [f"{questions} questions", "", header, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in scores:
        lines.append(
            f"| {s.name} | {s.hit_at_1:.0%} | {s.hit_at_5:.0%} | {s.mrr:.2f} | {s.in_answer:.0%} "
            f"| {s.index_s:.1f} | {s.query_p50_ms:.2f} | {s.query_p95_ms:.2f} |"
        )
    kinds = list(scores[0].by_kind)
    lines += ["", "| hit@5 by kind | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    for s in scores:
        lines.append(f"| {s.name} | " + " | ".join(f"{s.by_kind[k]:.0%}" for k in kinds) + " |")
    return "\n".join(lines)
