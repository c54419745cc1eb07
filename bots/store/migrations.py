"""The PostgreSQL schema, as numbered migrations applied once however many instances start.

Every instance calls `migrate` at start; a session advisory lock makes the others wait while the
first applies what is missing, and each migration runs in its own transaction, so a crash halfway
leaves the schema at the last whole step. Append new steps; never edit an applied one.
"""

from __future__ import annotations

import logging

import psycopg

from bots.store.base import StoreUnavailable

log = logging.getLogger(__name__)

# Advisory lock namespaces (the first key of pg_advisory_lock(int, int)): "bots" in ASCII, + n.
NAMESPACE = 0x626F7400
MIGRATION_LOCK = (NAMESPACE, 0)

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE conversations (
        id BIGSERIAL PRIMARY KEY,
        platform TEXT NOT NULL,
        place TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        UNIQUE (platform, place)
    );
    CREATE TABLE turns (
        id BIGSERIAL PRIMARY KEY,
        conversation_id BIGINT NOT NULL REFERENCES conversations(id),
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        persona_id TEXT NOT NULL,
        user_id TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'complete',
        sources TEXT NOT NULL DEFAULT '[]',
        platform_message_id TEXT NOT NULL DEFAULT '',
        forgotten INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        owner TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX turns_by_conversation ON turns (conversation_id, id);
    CREATE INDEX turns_by_message ON turns (platform_message_id);
    CREATE INDEX turns_pending ON turns (owner) WHERE status = 'pending';
    CREATE TABLE feedback (
        id BIGSERIAL PRIMARY KEY,
        turn_id BIGINT NOT NULL REFERENCES turns(id),
        user_id TEXT NOT NULL,
        value INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        UNIQUE (turn_id, user_id)
    );
    CREATE TABLE seen_events (
        key TEXT PRIMARY KEY,
        seen_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX seen_events_by_time ON seen_events (seen_at);
    CREATE TABLE budget_charges (
        key TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX budget_charges_by_key ON budget_charges (key, at);
    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        lock_key INTEGER NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        seen_at DOUBLE PRECISION NOT NULL,
        facts JSONB NOT NULL DEFAULT '{}'
    );
    """,
    # 2: REST rate-limit blocks every instance on one bot token honours (bots.store.limits).
    """
    CREATE TABLE rest_limits (
        key TEXT PRIMARY KEY,
        until DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX rest_limits_by_until ON rest_limits (until);
    """,
    # 3: what each reply was made from (`bots.chat.provenance`), and the store's own secrets
    # (the key of an export's pseudonyms). Written to be harmless if run twice.
    """
    ALTER TABLE turns ADD COLUMN IF NOT EXISTS persona_version TEXT NOT NULL DEFAULT '';
    ALTER TABLE turns ADD COLUMN IF NOT EXISTS made_from TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE IF NOT EXISTS store_secrets (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
)


class SchemaTooNew(StoreUnavailable):
    """The database was migrated by a newer bots; this one must not write to it."""


async def migrate(conn: psycopg.AsyncConnection[object]) -> int:
    """Apply the missing migrations (waiting for another instance doing it); how many ran."""
    await conn.execute("SELECT pg_advisory_lock(%s, %s)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
        row = await cursor.fetchone()
        current = int(row[0]) if row else 0  # type: ignore[index]
        if current > len(MIGRATIONS):
            raise SchemaTooNew(
                f"the database schema is at version {current}, newer than this bots "
                f"({len(MIGRATIONS)}): upgrade bots on this machine"
            )
        for version, sql in enumerate(MIGRATIONS[current:], current + 1):
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version) VALUES (%s)", (version,)
                )
            log.info("database migrated to version %d", version)
        return len(MIGRATIONS) - current
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s, %s)", MIGRATION_LOCK)
