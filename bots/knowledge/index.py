"""One searchable index over one folder, kept up to date incrementally and cached on disk."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

import bots.knowledge.audience as audience
import bots.knowledge.dense as dense_search
import bots.knowledge.hygiene as hygiene
import bots.knowledge.ranking as ranking
import bots.progress as progress
from bots.knowledge.cache import ChunkCache, StoredDocument
from bots.knowledge.extract import extract
from bots.knowledge.lexical import LexicalIndex, Vocabulary, tokenize
from bots.knowledge.model import Chunk, Exclusion, Hit, IndexStats, RefreshResult
from bots.knowledge.overrides import SETTINGS_FILE
from bots.knowledge.scan import MAX_DOCUMENT_BYTES, Candidate, scan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Entry:
    """A document as the index holds it in memory: its chunks and their term ids."""

    rel: str
    size: int
    mtime_ns: int
    sha256: str
    error: str | None
    chunks: tuple[Chunk, ...]
    term_ids: tuple[list[int], ...]
    signature: hygiene.Signature | None  # to find pages that repeat another (see hygiene)


@dataclass
class _Changes:
    """What one refresh changed: saved to the cache in one transaction, counted in the result."""

    stored: list[StoredDocument] = field(default_factory=list)  # added or updated, re-read
    restamped: list[tuple[str, int, int]] = field(default_factory=list)  # same content, new stat
    added: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass(frozen=True)
class _Snapshot:
    """What searches read: replaced whole, in one assignment, when a refresh finishes."""

    chunks: tuple[Chunk, ...]
    lexical: LexicalIndex
    stats: IndexStats
    vectors: dense_search.Vectors | None = None  # one row per chunk, when dense retrieval is on
    weights: tuple[float, ...] = ()  # the chunks' document weights (`ranking.document_weight`)
    # The chunk numbers of each restriction that some document is under (none: all public).
    restricted: dict[audience.Access, npt.NDArray[np.intp]] = field(default_factory=dict)
    access: dict[str, audience.Access] = field(default_factory=dict)  # by path, restricted only

    def hidden(self, reader: audience.Reader) -> npt.NDArray[np.intp] | None:
        """The chunk numbers `reader` may not see; None when it may see them all."""
        parts = [
            numbers
            for access, numbers in self.restricted.items()
            if not audience.visible(access, reader)
        ]
        return np.concatenate(parts) if parts else None


class KnowledgeIndex:
    """The BM25 index of the documents under `root` (a persona folder or a shared library).

    `refresh()` brings it up to date, re-reading only documents whose size or mtime changed and
    whose content hash changed, and keeps their chunks in `cache_dir` so a new process re-reads
    nothing unchanged. `search()` may run in other threads meanwhile: it reads an immutable
    snapshot that the refresh swaps in when done. Until the first refresh the index is empty.

    With `dense` (default: `dense:` in the folder's knowledge.yaml) chunks are also embedded and
    searches fuse both rankings (see `bots.knowledge.dense`); `fusion` picks how.
    """

    def __init__(
        self,
        root: Path,
        cache_dir: Path,
        *,
        library: str | None = None,
        dense: bool | None = None,
        fusion: dense_search.Fusion = "weighted",
    ) -> None:
        self.root = root
        self.library = library
        self.fusion = fusion
        self._dense = dense
        self._embeddings: dense_search.EmbeddingCache | None = None
        self._cache_dir = cache_dir
        self._cache = ChunkCache(cache_dir, root)
        self._vocabulary = Vocabulary()
        self._entries: dict[str, _Entry] | None = None  # None: the cache is not loaded yet
        self._refresh_lock = threading.Lock()
        self._audience: tuple[audience.Rule, ...] | None = None  # the last good one
        self._snapshot = _Snapshot((), LexicalIndex([], self._vocabulary), IndexStats(0, 0, ()))

    @property
    def refreshed(self) -> bool:
        """Whether a refresh has finished (before that, searches find nothing)."""
        return self._entries is not None

    @property
    def chunks(self) -> tuple[Chunk, ...]:
        """Every searchable chunk, by document path and position, as of the last refresh."""
        return self._snapshot.chunks

    @property
    def stats(self) -> IndexStats:
        """The figures of the index as of the last refresh."""
        return self._snapshot.stats

    def search(
        self, query: str, k: int = 4, reader: audience.Reader = audience.EVERYONE
    ) -> list[Hit]:
        """The `k` chunks that best match `query`, best first (see GROUNDING_MIN_SCORE), among
        those `reader` may see: the others are never candidates, whatever they score."""
        snapshot = self._snapshot
        depth = k * ranking.CANDIDATES_PER_HIT
        hidden = snapshot.hidden(reader)
        if snapshot.vectors is not None and len(snapshot.vectors):
            lexical = snapshot.lexical.search(
                tokenize(query), max(depth, dense_search.FUSION_DEPTH), hidden
            )
            cosines = snapshot.vectors @ dense_search.shared_embedder().query(query)
            if hidden is not None:
                cosines[hidden] = -1.0
            fused = dense_search.fuse(lexical, cosines, snapshot.weights, self.fusion)
            unseen = set() if hidden is None else set(hidden.tolist())
            found = [pair for pair in fused if pair[0] not in unseen][:depth]
        else:
            found = snapshot.lexical.search(tokenize(query), depth, hidden)
        best = ranking.diversify(
            found, k, document=lambda pair: snapshot.chunks[pair[0]].path, score=lambda p: p[1]
        )
        return [
            Hit(
                path=f"{self.library}/{chunk.path}" if self.library else chunk.path,
                title=chunk.title,
                heading=chunk.heading,
                text=chunk.text,
                score=score,
                library=self.library,
                access=snapshot.access.get(chunk.path, audience.PUBLIC),
            )
            for number, score in best
            for chunk in (snapshot.chunks[number],)
        ]

    def access(self, rel: str) -> audience.Access:
        """Who may see the document at `rel` (relative to the folder), as of the last refresh."""
        return self._snapshot.access.get(rel, audience.PUBLIC)

    def refresh(self) -> RefreshResult:
        """Bring the index up to date with the folder; one refresh runs at a time."""
        with self._refresh_lock:
            return self._refresh()

    def _refresh(self) -> RefreshResult:
        started = time.perf_counter()
        first = self._entries is None
        old = self._load_cache() if self._entries is None else self._entries
        found = scan(self.root)
        skipped = list(found.skipped)
        changes = _Changes()
        entries: dict[str, _Entry] = {}
        reading = self._progress("reading", len(found.candidates), "files")
        for candidate in found.candidates:
            entry = self._visit(candidate, old.get(candidate.rel), changes, skipped)
            if entry is not None:
                entries[candidate.rel] = entry
            reading.advance()
        reading.finish()
        removed = [rel for rel in old if rel not in entries]
        if changes.stored or changes.restamped or removed:
            self._cache.save(changes.stored, changes.restamped, removed)
        skipped.extend(f"{e.rel}: {e.error}" for e in entries.values() if e.error)
        self._entries = entries
        rebuild = first or bool(changes.stored or removed)
        wanted = found.overrides.dense if self._dense is None else self._dense
        if found.overrides.valid or self._audience is None:
            self._audience = found.overrides.audience
        elif self._audience:
            skipped.append(f"{SETTINGS_FILE}: the last good audience stays until it is fixed")
        stats = self._publish(
            entries,
            rules=self._audience,
            rebuild=rebuild,
            embedder=self._embedder(wanted, skipped),
            skipped=skipped,
            excluded=found.excluded,
            started=started,
        )
        result = RefreshResult(
            added=changes.added,
            updated=changes.updated,
            removed=len(removed),
            unchanged=changes.unchanged,
            read=len(changes.stored),
            duration_ms=stats.last_refresh_ms,
            skipped=stats.skipped,
        )
        if changes.stored or removed:
            log.info(
                "knowledge %s: %d added, %d updated, %d removed in %.0f ms",
                self.root,
                result.added,
                result.updated,
                result.removed,
                result.duration_ms,
            )
        return result

    def _visit(
        self,
        candidate: Candidate,
        previous: _Entry | None,
        changes: _Changes,
        skipped: list[str],
    ) -> _Entry | None:
        """The up-to-date entry of one file, read again only if its content changed."""
        if previous and (previous.size, previous.mtime_ns) == (candidate.size, candidate.mtime_ns):
            changes.unchanged += 1
            return previous
        data = self._read_bytes(candidate, skipped)
        if data is None:
            return None
        digest = hashlib.sha256(data).hexdigest()
        if previous and previous.sha256 == digest:
            # Touched but not changed (a save without edits, a checkout): no need to re-read.
            changes.restamped.append((candidate.rel, candidate.size, candidate.mtime_ns))
            changes.unchanged += 1
            return replace(previous, size=candidate.size, mtime_ns=candidate.mtime_ns)
        stored = extract(candidate, data, digest)
        changes.stored.append(stored)
        if previous:
            changes.updated += 1
        else:
            changes.added += 1
        return self._entry(stored)

    def _publish(
        self,
        by_path: dict[str, _Entry],
        *,
        rules: tuple[audience.Rule, ...],
        rebuild: bool,
        embedder: dense_search.Embedder | None,
        skipped: list[str],
        excluded: tuple[Exclusion, ...],
        started: float,
    ) -> IndexStats:
        """Swap in a new snapshot; the BM25 matrix is rebuilt only when some chunk changed.

        A page with (nearly) the same text as another is left out of the snapshot, not of the cache:
        when the other one changes or goes, it is back without being read again.
        """
        same_as = hygiene.duplicates(
            {rel: e.signature for rel, e in by_path.items()},
            lambda rel: hygiene.shingles(by_path[rel].term_ids),
        )
        entries = [by_path[rel] for rel in sorted(by_path) if rel not in same_as]
        excluded += tuple(
            Exclusion(rel, hygiene.DUPLICATE, kept) for rel, kept in sorted(same_as.items())
        )
        previous = self._snapshot
        chunks, lexical = previous.chunks, previous.lexical
        vectors, weights = previous.vectors, previous.weights
        if rebuild or (vectors is None) != (embedder is None):
            pairs = [
                (chunk, ids)
                for entry in entries
                for chunk, ids in zip(entry.chunks, entry.term_ids, strict=True)
                if ids  # a chunk of stopwords only can never match
            ]
            chunks = tuple(chunk for chunk, _ in pairs)
            weights = tuple(ranking.document_weight(chunk.path, chunk.title) for chunk in chunks)
            lexical = LexicalIndex([ids for _, ids in pairs], self._vocabulary, list(weights))
            vectors = self._embed(embedder, chunks) if embedder else None
        for reason in sorted(set(skipped) - set(previous.stats.skipped)):
            log.warning("knowledge %s: skipped %s", self.root, reason)
        stats = IndexStats(
            documents=sum(1 for entry in entries if not entry.error),
            chunks=len(chunks),
            skipped=tuple(sorted(skipped)),
            bytes=sum(entry.size for entry in entries if not entry.error),
            last_refresh_ms=(time.perf_counter() - started) * 1000,
            excluded=excluded,
        )
        access = {e.rel: a for e in entries if (a := audience.access_of(e.rel, rules))}
        restricted: dict[audience.Access, list[int]] = {}
        for number, chunk in enumerate(chunks):
            if chunk.path in access:
                restricted.setdefault(access[chunk.path], []).append(number)
        self._snapshot = _Snapshot(
            chunks,
            lexical,
            stats,
            vectors,
            weights,
            {key: np.asarray(numbers, dtype=np.intp) for key, numbers in restricted.items()},
            access,
        )
        return stats

    def _embedder(self, wanted: bool, skipped: list[str]) -> dense_search.Embedder | None:
        """The model when dense retrieval is on and installed; a skipped reason when not."""
        if not wanted:
            return None
        try:
            return dense_search.shared_embedder()
        except dense_search.DenseUnavailable as error:
            skipped.append(f"dense: true: {error}; searching with BM25 alone")
            return None

    def _embed(
        self, embedder: dense_search.Embedder, chunks: tuple[Chunk, ...]
    ) -> dense_search.Vectors:
        if self._embeddings is None:
            self._embeddings = dense_search.EmbeddingCache(self._cache_dir, embedder.name)
        started = time.perf_counter()
        vectors, embedded = self._embeddings.vectors(
            embedder, chunks, lambda total: self._progress("embedding", total, "chunks")
        )
        if embedded:
            log.info(
                "knowledge %s: embedded %d chunks in %.1f s",
                self.root,
                embedded,
                time.perf_counter() - started,
            )
        return vectors

    def _progress(self, stage: str, total: int, unit: str) -> progress.Progress:
        return progress.Progress(
            f"knowledge {self.library or self.root.name}: {stage}", total, unit, logger=log
        )

    def _load_cache(self) -> dict[str, _Entry]:
        return {rel: self._entry(stored) for rel, stored in self._cache.load().items()}

    def _entry(self, stored: StoredDocument) -> _Entry:
        term_ids = tuple(self._vocabulary.ids(terms.split()) for terms in stored.terms)
        return _Entry(
            rel=stored.rel,
            size=stored.size,
            mtime_ns=stored.mtime_ns,
            sha256=stored.sha256,
            error=stored.error,
            chunks=stored.chunks,
            term_ids=term_ids,
            signature=hygiene.signature(hygiene.shingles(term_ids)),
        )

    def _read_bytes(self, candidate: Candidate, skipped: list[str]) -> bytes | None:
        """The file's bytes, or None (and a reason in `skipped`) when it must not or cannot be
        read. The link check is repeated here: a link may have been re-pointed since the scan."""
        if not candidate.path.resolve().is_relative_to(self.root.resolve()):
            skipped.append(f"{candidate.rel}: refused: a link to outside the folder")
            return None
        try:
            with candidate.path.open("rb") as file:
                data = file.read(MAX_DOCUMENT_BYTES + 1)
        except OSError as error:
            skipped.append(f"{candidate.rel}: cannot read: {error.strerror}")
            return None
        if len(data) > MAX_DOCUMENT_BYTES:
            skipped.append(f"{candidate.rel}: too large (it grew past the limit while read)")
            return None
        return data
