"""The one-machine conversation file: turns in SQLite (WAL), keyed by platform + place.

One connection guarded by a lock, plain calls (for `SqliteStore`, `bots db copy` and tests).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bots.chat.model import Feedback, Turn, TurnStatus
from bots.store.rows import feedback_of, turn_of

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    platform TEXT NOT NULL,
    place TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (platform, place)
);
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    persona_id TEXT NOT NULL,
    user_id TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'complete',
    sources TEXT NOT NULL DEFAULT '[]',
    platform_message_id TEXT NOT NULL DEFAULT '',
    forgotten INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns (conversation_id, id);
CREATE INDEX IF NOT EXISTS turns_by_message ON turns (platform_message_id);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY,
    turn_id INTEGER NOT NULL REFERENCES turns(id),
    user_id TEXT NOT NULL,
    value INTEGER NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (turn_id, user_id)
);
CREATE TABLE IF NOT EXISTS seen_events (
    key TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS store_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
# Columns added since the first schema, added in place to an older file (idempotent): what each
# reply was made from (the persona's content hash; sources, pinned documents, history, reader).
ADDED_COLUMNS = {
    "turns": (
        ("persona_version", "TEXT NOT NULL DEFAULT ''"),
        ("made_from", "TEXT NOT NULL DEFAULT '{}'"),
    ),
}


class SqliteFile:
    """Turns, feedback and the de-duplication record of one bot, in one SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            _add_columns(self._db)
            # A reply that was streaming when the process died stays visibly interrupted.
            self._db.execute("UPDATE turns SET status='interrupted' WHERE status='pending'")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def conversation_id(self, platform: str, place: str) -> int:
        with self._lock:
            row = self._db.execute(
                "INSERT INTO conversations (platform, place, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (platform, place) DO UPDATE SET platform=excluded.platform "
                "RETURNING id",
                (platform, place, time.time()),
            ).fetchone()
        return int(row[0])

    def history(self, conversation_id: int, limit: int = 50) -> list[Turn]:
        """The latest `limit` remembered turns, oldest first (interrupted replies excluded)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM turns WHERE conversation_id=? AND forgotten=0 "
                "AND status='complete' ORDER BY id DESC LIMIT ?",
                (conversation_id, limit),
            ).fetchall()
        return [turn_of(r) for r in reversed(rows)]

    def turns(self, conversation_id: int) -> list[Turn]:
        """Every turn, in order, whatever its status (for inspection and tests)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM turns WHERE conversation_id=? ORDER BY id", (conversation_id,)
            ).fetchall()
        return [turn_of(r) for r in rows]

    def add_turn(
        self,
        conversation_id: int,
        role: str,
        content: str,
        persona_id: str,
        *,
        user_id: str = "",
        status: TurnStatus = "complete",
        sources: Sequence[dict[str, Any]] = (),
        platform_message_id: str = "",
        persona_version: str = "",
        made_from: Mapping[str, Any] | None = None,
    ) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO turns (conversation_id, role, content, persona_id, user_id, status, "
                "sources, platform_message_id, created_at, persona_version, made_from) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    role,
                    content,
                    persona_id,
                    user_id,
                    status,
                    json.dumps(list(sources)),
                    platform_message_id,
                    time.time(),
                    persona_version,
                    json.dumps(dict(made_from or {})),
                ),
            )
        return int(cur.lastrowid or 0)

    def finish_turn(
        self,
        turn_id: int,
        content: str,
        status: TurnStatus,
        sources: Sequence[dict[str, Any]] = (),
    ) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE turns SET content=?, status=?, sources=? WHERE id=?",
                (content, status, json.dumps(list(sources)), turn_id),
            )

    def set_message_id(self, turn_id: int, platform_message_id: str) -> None:
        """Remember which platform message shows a turn (for replies and reactions)."""
        with self._lock:
            self._db.execute(
                "UPDATE turns SET platform_message_id=? WHERE id=?", (platform_message_id, turn_id)
            )

    def forget(self, conversation_id: int) -> int:
        """`/reset`: later replies no longer see earlier turns; they stay for feedback."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE turns SET forgotten=1 WHERE conversation_id=? AND forgotten=0",
                (conversation_id,),
            )
        return cur.rowcount

    def turn_by_message(self, platform: str, platform_message_id: str) -> Turn | None:
        with self._lock:
            row = self._db.execute(
                "SELECT t.* FROM turns t JOIN conversations c ON c.id=t.conversation_id "
                "WHERE c.platform=? AND t.platform_message_id=? ORDER BY t.id DESC LIMIT 1",
                (platform, platform_message_id),
            ).fetchone()
        return turn_of(row) if row else None

    def conversations(self) -> list[tuple[int, str, str]]:
        """Every conversation as (id, platform, place), oldest first (for `bots export`)."""
        with self._lock:
            rows = self._db.execute("SELECT id, platform, place FROM conversations ORDER BY id")
            return [(int(r[0]), r[1], r[2]) for r in rows.fetchall()]

    def secret(self, name: str) -> str:
        """This store's secret `name`, made (random) the first time it is asked for."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO store_secrets (name, value) VALUES (?, ?)",
                (name, secrets.token_hex(32)),
            )
            row = self._db.execute(
                "SELECT value FROM store_secrets WHERE name=?", (name,)
            ).fetchone()
        return str(row[0])

    def place_of(self, conversation_id: int) -> tuple[str, str] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT platform, place FROM conversations WHERE id=?", (conversation_id,)
            ).fetchone()
        return (row[0], row[1]) if row else None

    def add_feedback(self, turn_id: int, user_id: str, value: int) -> None:
        """Record a reaction; a user's later reaction on the same reply replaces the earlier."""
        with self._lock:
            self._db.execute(
                "INSERT INTO feedback (turn_id, user_id, value, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (turn_id, user_id) DO UPDATE SET value=excluded.value, "
                "created_at=excluded.created_at",
                (turn_id, user_id, value, time.time()),
            )

    def remove_feedback(self, turn_id: int, user_id: str, value: int) -> None:
        with self._lock:
            self._db.execute(
                "DELETE FROM feedback WHERE turn_id=? AND user_id=? AND value=?",
                (turn_id, user_id, value),
            )

    def feedback(self, persona_id: str | None = None) -> list[Feedback]:
        """Feedback with the question and answer it was about, newest first."""
        query = (
            "SELECT f.turn_id, t.persona_id, c.platform, f.user_id, f.value, f.created_at, "
            "t.content AS answer, t.sources, "
            "(SELECT q.content FROM turns q WHERE q.conversation_id=t.conversation_id "
            " AND q.id<t.id AND q.role='user' ORDER BY q.id DESC LIMIT 1) AS question "
            "FROM feedback f JOIN turns t ON t.id=f.turn_id "
            "JOIN conversations c ON c.id=t.conversation_id "
        )
        args: tuple[Any, ...] = ()
        if persona_id:
            query += "WHERE t.persona_id=? "
            args = (persona_id,)
        with self._lock:
            rows = self._db.execute(query + "ORDER BY f.created_at DESC", args).fetchall()
        return [feedback_of(r) for r in rows]

    def first_sighting(self, key: str, ttl_s: float) -> bool:
        """True the first time `key` is seen within `ttl_s`; persisted across restarts."""
        now = time.time()
        with self._lock:
            self._db.execute("DELETE FROM seen_events WHERE seen_at < ?", (now - ttl_s,))
            cur = self._db.execute(
                "INSERT OR IGNORE INTO seen_events (key, seen_at) VALUES (?, ?)", (key, now)
            )
        return cur.rowcount == 1

    def counts(self) -> dict[str, int]:
        """Rows per table (what a copy must carry over)."""
        with self._lock:
            return {
                table: int(self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
                for table in TABLES
            }

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of one table, in id order (for `bots db copy`)."""
        order = {"seen_events": "key", "store_secrets": "name"}.get(table, "id")
        with self._lock:
            cursor = self._db.execute(f"SELECT * FROM {table} ORDER BY {order}")
            return [dict(r) for r in cursor.fetchall()]


TABLES = ("conversations", "turns", "feedback", "seen_events", "store_secrets")


def _add_columns(db: sqlite3.Connection) -> None:
    for table, columns in ADDED_COLUMNS.items():
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, declaration in columns:
            if name not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
