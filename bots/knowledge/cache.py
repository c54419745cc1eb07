"""The on-disk cache of extracted chunks, so a restart re-reads no unchanged document.

One SQLite file per index, one row per document: the stat and content hash that tell whether the
file changed, and its chunks with their index terms as JSON. The cache is disposable: a damaged
file, another root or another CACHE_FORMAT is dropped and rebuilt from the documents.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from bots.knowledge.model import Chunk

log = logging.getLogger(__name__)

# Bump when readers, chunking or tokenizing change what a document turns into.
CACHE_FORMAT = "3"
CACHE_FILE_NAME = "chunks.sqlite3"
_BUSY_TIMEOUT_S = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    title TEXT NOT NULL,
    error TEXT,
    chunks TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class StoredDocument:
    """One document as extracted: its chunks and, per chunk, its index terms joined by spaces.

    `error` is set (and there are no chunks) when the file could not be read; keeping that
    outcome spares re-reading a damaged file on every refresh until it changes.
    """

    rel: str
    size: int
    mtime_ns: int
    sha256: str
    title: str
    error: str | None
    chunks: tuple[Chunk, ...]
    terms: tuple[str, ...]


class ChunkCache:
    """Loads and saves the `StoredDocument`s of the index of `root`."""

    def __init__(self, cache_dir: Path, root: Path) -> None:
        self.path = cache_dir / CACHE_FILE_NAME
        self._identity = {"format": CACHE_FORMAT, "root": str(root.absolute())}

    def load(self) -> dict[str, StoredDocument]:
        """Every stored document by relative path; empty when there is no usable cache."""
        if not self.path.exists():
            return {}
        try:
            with closing(self._connect()) as db:
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
                if meta != self._identity:
                    return {}
                rows = db.execute(
                    "SELECT path, size, mtime_ns, sha256, title, error, chunks FROM documents"
                ).fetchall()
            return {row[0]: _document_from_row(row) for row in rows}
        except (sqlite3.DatabaseError, ValueError, TypeError) as error:
            log.warning("knowledge cache %s is damaged (%s); rebuilding it", self.path, error)
            self.path.unlink(missing_ok=True)
            return {}

    def save(
        self,
        changed: Iterable[StoredDocument],
        restamped: Iterable[tuple[str, int, int]],
        removed: Iterable[str],
    ) -> None:
        """Write new or re-read documents, new (path, size, mtime_ns) stamps, and removals.

        A cache that cannot be written costs re-reading after a restart, not correctness: the
        failure is logged and the index goes on from memory.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(self._connect()) as db, db:
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
                if meta != self._identity:
                    db.execute("DELETE FROM documents")
                    db.execute("DELETE FROM meta")
                    db.executemany("INSERT INTO meta VALUES (?, ?)", self._identity.items())
                db.executemany(
                    "INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (_row_from_document(document) for document in changed),
                )
                db.executemany(
                    "UPDATE documents SET size = ?, mtime_ns = ? WHERE path = ?",
                    ((size, mtime_ns, rel) for rel, size, mtime_ns in restamped),
                )
                db.executemany("DELETE FROM documents WHERE path = ?", ((r,) for r in removed))
        except (OSError, sqlite3.Error) as error:
            log.warning("cannot write the knowledge cache %s: %s", self.path, error)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S)
        db.executescript(_SCHEMA)
        return db


def _row_from_document(document: StoredDocument) -> tuple[object, ...]:
    chunks = [
        [chunk.heading, chunk.text, terms]
        for chunk, terms in zip(document.chunks, document.terms, strict=True)
    ]
    return (
        document.rel,
        document.size,
        document.mtime_ns,
        document.sha256,
        document.title,
        document.error,
        json.dumps(chunks, ensure_ascii=False),
    )


def _document_from_row(row: tuple[object, ...]) -> StoredDocument:
    rel, size, mtime_ns, sha256, title, error, chunks_json = row
    if not (
        isinstance(rel, str)
        and isinstance(size, int)
        and isinstance(mtime_ns, int)
        and isinstance(sha256, str)
        and isinstance(title, str)
        and (error is None or isinstance(error, str))
        and isinstance(chunks_json, str)
    ):
        raise TypeError(f"malformed row for {rel!r}")
    stored = json.loads(chunks_json)
    chunks = tuple(
        Chunk(path=rel, title=title, heading=heading, text=text, position=position)
        for position, (heading, text, _) in enumerate(stored)
    )
    return StoredDocument(
        rel=rel,
        size=size,
        mtime_ns=mtime_ns,
        sha256=sha256,
        title=title,
        error=error,
        chunks=chunks,
        terms=tuple(terms for _, _, terms in stored),
    )
