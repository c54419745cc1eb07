"""Stores made by an older bots migrate in place without losing a row, on both back ends: SQLite
gains the new columns where it stands (and again is a no-op), PostgreSQL runs migration 3 over a
database left at version 1 with rows in it. Replies then record what they were made from."""

from __future__ import annotations

from pathlib import Path

from bots.store.sqlite_file import SqliteFile
from tests.old_stores import OLD_TURNS, write_old_sqlite

MADE_FROM = {"version": 1, "chunks": [{"path": "a.md", "text": "A."}], "history": {"turns": [1]}}


def test_an_old_sqlite_store_gains_the_columns_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "conversations.sqlite3"
    write_old_sqlite(path, "helper")
    for _ in range(2):  # the second open finds the columns there and changes nothing
        file = SqliteFile(path)
        try:
            turns = file.turns(1)
            assert [(t.role, t.content) for t in turns] == [(r, c) for r, c, *_ in OLD_TURNS]
            assert turns[3].sources[0]["path"] == "handbook/vacation.md"
            assert all(t.persona_version == "" and t.made_from == {} for t in turns)
            assert [f.value for f in file.feedback("helper")] == [1, 1]
            assert file.counts()["turns"] == len(OLD_TURNS)
        finally:
            file.close()
    file = SqliteFile(path)
    try:
        new = file.add_turn(
            1, "assistant", "Hi.", "helper", persona_version="abc", made_from=MADE_FROM
        )
        (last,) = [t for t in file.turns(1) if t.id == new]
        assert (last.persona_version, last.made_from) == ("abc", MADE_FROM)
        assert file.secret("s") == file.secret("s") != file.secret("other")
    finally:
        file.close()


async def test_a_postgres_store_at_version_1_with_rows_migrates_to_3(database_url: str) -> None:
    import psycopg

    from bots.store.migrations import MIGRATIONS
    from bots.store.postgres import PostgresStore
    from tests.old_stores import old_rows

    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "CREATE TABLE schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        await conn.execute(MIGRATIONS[0])
        await conn.execute("INSERT INTO schema_migrations (version) VALUES (1)")
        await conn.execute(
            "INSERT INTO conversations (id, platform, place, created_at) "
            "VALUES (1, 'slack', 'C0PUBLIC1', 1000.0)"
        )
        for row in old_rows("helper"):
            await conn.execute(
                "INSERT INTO turns (conversation_id, role, content, persona_id, user_id, sources, "
                "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                row,
            )
        await conn.execute(
            "INSERT INTO feedback (turn_id, user_id, value, created_at) "
            "SELECT id, 'U0BOB0001', 1, 2000.0 FROM turns WHERE role='assistant' LIMIT 1"
        )
    store = PostgresStore(database_url, "migrating")
    await store.open()
    try:
        turns = await store.turns(1)
        assert [(t.role, t.content) for t in turns] == [(r, c) for r, c, *_ in OLD_TURNS]
        assert turns[3].sources[0]["path"] == "handbook/vacation.md"
        assert all(t.persona_version == "" and t.made_from == {} for t in turns)
        assert len(await store.feedback("helper")) == 1
        new = await store.add_turn(
            1, "assistant", "Hi.", "helper", persona_version="abc", made_from=MADE_FROM
        )
        (last,) = [t for t in await store.turns(1) if t.id == new]
        assert (last.persona_version, last.made_from) == ("abc", MADE_FROM)
        assert await store.secret("s") == await store.secret("s") != await store.secret("o")
        assert await store.conversations() == [(1, "slack", "C0PUBLIC1")]
    finally:
        await store.close()
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute("SELECT max(version) FROM schema_migrations")
        assert (await cursor.fetchone()) == (len(MIGRATIONS),)


async def test_bots_db_copy_carries_the_new_columns_and_the_store_secret(
    tmp_path: Path, database_url: str
) -> None:
    from bots.store.copy import copy_sqlite
    from bots.store.postgres import PostgresStore

    path = tmp_path / "conversations.sqlite3"
    write_old_sqlite(path, "helper")
    file = SqliteFile(path)
    try:
        new = file.add_turn(
            1, "assistant", "Hi.", "helper", persona_version="abc", made_from=MADE_FROM
        )
        secret = file.secret("export-pseudonyms")
    finally:
        file.close()
    counts = await copy_sqlite(path, database_url)
    assert counts["store_secrets"] == 1 and counts["turns"] == len(OLD_TURNS) + 1
    store = PostgresStore(database_url, "copied")
    await store.open()
    try:
        (copied,) = [t for t in await store.turns(1) if t.id == new]
        assert (copied.persona_version, copied.made_from) == ("abc", MADE_FROM)
        assert await store.secret("export-pseudonyms") == secret  # the same pseudonyms after
    finally:
        await store.close()
