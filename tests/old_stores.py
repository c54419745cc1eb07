"""Stores as an older bots left them (before replies recorded what they were made from), with
rows in them: what the migration tests and the export of an old store start from."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

# The SQLite schema as bots wrote it before schema version 3 (no persona_version, made_from,
# store_secrets).
OLD_SQLITE = """
CREATE TABLE conversations (
    id INTEGER PRIMARY KEY, platform TEXT NOT NULL, place TEXT NOT NULL,
    created_at REAL NOT NULL, UNIQUE (platform, place));
CREATE TABLE turns (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
    role TEXT NOT NULL, content TEXT NOT NULL, persona_id TEXT NOT NULL,
    user_id TEXT NOT NULL DEFAULT '', status TEXT NOT NULL DEFAULT 'complete',
    sources TEXT NOT NULL DEFAULT '[]', platform_message_id TEXT NOT NULL DEFAULT '',
    forgotten INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL);
CREATE TABLE feedback (
    id INTEGER PRIMARY KEY, turn_id INTEGER NOT NULL REFERENCES turns(id),
    user_id TEXT NOT NULL, value INTEGER NOT NULL, created_at REAL NOT NULL,
    UNIQUE (turn_id, user_id));
CREATE TABLE seen_events (key TEXT PRIMARY KEY, seen_at REAL NOT NULL);
"""

VACATION = [{"path": "handbook/vacation.md", "title": "Vacation", "heading": "", "score": 0.8}]
SALARIES = [{"path": "handbook/hr/salaries.md", "title": "Salary", "heading": "", "score": 0.9}]

# (role, content, user, sources, thumbs) in one Slack conversation, oldest first.
OLD_TURNS: list[tuple[str, str, str, list[dict[str, object]], int]] = [
    ("user", "Hello there", "U0ALICE01", [], 0),
    ("assistant", "Hello! How can I help?", "", [], 1),
    ("user", "How many vacation days do I get?", "U0ALICE01", [], 0),
    ("assistant", "25 days a year.", "", VACATION, 1),
    ("user", "What do the salary bands pay?", "U0ALICE01", [], 0),
    ("assistant", "Band seven pays a lot.", "", SALARIES, 0),
]


def old_rows(persona: str) -> list[tuple[object, ...]]:
    """The turns rows (conversation 1), as INSERT values."""
    return [
        (1, role, content, persona, user, json.dumps(sources), 1000.0 + n)
        for n, (role, content, user, sources, _) in enumerate(OLD_TURNS)
    ]


def write_old_sqlite(path: Path, persona: str) -> None:
    """An SQLite store of the older schema with one conversation, its turns and feedback."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SQLITE)
        db.execute("INSERT INTO conversations VALUES (1, 'slack', 'C0PUBLIC1', 1000.0)")
        db.executemany(
            "INSERT INTO turns (conversation_id, role, content, persona_id, user_id, sources, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            old_rows(persona),
        )
        for n, turn in enumerate(OLD_TURNS, 1):
            if turn[4]:
                db.execute(
                    "INSERT INTO feedback (turn_id, user_id, value, created_at) "
                    "VALUES (?, 'U0BOB0001', ?, 2000.0)",
                    (n, turn[4]),
                )
    db.close()
