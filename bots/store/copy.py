"""`bots db copy`: an existing SQLite store, row for row, into an empty PostgreSQL database.

Ids are kept (platform message ids, feedback and the de-duplication record still point at the
same turns), the sequences continue after the highest id, the copy is one transaction (all or
nothing) and the row counts are compared before it commits. A reply that was still pending in
the SQLite file is copied as interrupted, as the next start on SQLite would have marked it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from bots.store.migrations import migrate
from bots.store.sqlite_file import TABLES, SqliteFile


class CopyRefused(Exception):
    """The copy cannot be made; the message says what to do."""


async def copy_sqlite(source: Path, url: str) -> dict[str, int]:
    """Copy `source` into the database at `url` (migrated first); rows copied per table."""
    if not source.is_file():
        raise CopyRefused(f"{source}: no SQLite store there (check --from or data_dir)")
    file = SqliteFile(source)
    try:
        counts = file.counts()
        tables = {table: file.rows(table) for table in TABLES}
    finally:
        file.close()
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise CopyRefused(f"cannot connect to database_url: {exc}") from None
    async with conn:
        await migrate(conn)
        present = await _counts(conn)
        if any(present[t] for t in ("conversations", "turns", "feedback")):
            raise CopyRefused(
                f"the database already holds {present['conversations']} conversations and "
                f"{present['turns']} turns: copy into an empty database"
            )
        async with conn.transaction():
            for table, rows in tables.items():
                await _copy_rows(conn, table, rows)
            for table in ("conversations", "turns", "feedback"):
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"coalesce(max(id), 1), max(id) IS NOT NULL) FROM {table}"
                )
            copied = await _counts(conn)
            if copied != counts:
                raise CopyRefused(f"copied {copied} rows, expected {counts}: nothing was kept")
    return counts


async def _copy_rows(
    conn: psycopg.AsyncConnection[Any], table: str, rows: list[dict[str, Any]]
) -> None:
    if not rows:
        return
    columns = list(rows[0])
    cursor = conn.cursor()
    async with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            if table == "turns" and row["status"] == "pending":
                row = {**row, "status": "interrupted"}
            await copy.write_row([row[c] for c in columns])


async def _counts(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    counts = {}
    for table in TABLES:
        cursor = await conn.execute(f"SELECT count(*) FROM {table}")
        row = await cursor.fetchone()
        counts[table] = int(row[0]) if row else 0
    return counts
