"""REST rate-limit blocks shared by every instance on one database: "key blocked until T".

Several instances on one bot token draw on the same platform buckets (Discord counts a bot's
requests per route and globally, whichever process sends them), so a bucket one instance found
exhausted is exhausted for all. A block is a row; T is on the database's clock, so the
instances' clocks need not agree. Expired rows go a few at a time as blocks are written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg

NOW = "extract(epoch from clock_timestamp())::float8"
# Blocks longer than this are not believed (a garbled header must not stop the bot for hours).
MAX_BLOCK_S = 600.0

Connect = Callable[[], AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]]


class PostgresRestLimits:
    """The `RestLimits` of a PostgreSQL store; counts what it was asked, for /metrics."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self.blocks = 0  # blocks this instance recorded
        self.waits = 0  # requests of this instance that found a live block
        self.waited_s = 0.0

    async def blocked_for(self, keys: Sequence[str]) -> float:
        async with self._connect() as conn:
            cursor = await conn.execute(
                f"SELECT coalesce(max(until) - {NOW}, 0) FROM rest_limits WHERE key = ANY(%s)",
                (list(keys),),
            )
            row = await cursor.fetchone()
        wait = max(0.0, float(row[0])) if row else 0.0
        if wait > 0:
            self.waits += 1
            self.waited_s += wait
        return wait

    async def block(self, key: str, seconds: float) -> None:
        seconds = min(max(0.0, seconds), MAX_BLOCK_S)
        async with self._connect() as conn:
            await conn.execute(
                "DELETE FROM rest_limits WHERE key IN (SELECT key FROM rest_limits "
                f"WHERE until < {NOW} LIMIT 20)"
            )
            await conn.execute(
                f"INSERT INTO rest_limits (key, until) VALUES (%s, {NOW} + %s) "
                "ON CONFLICT (key) DO UPDATE SET "
                "until = greatest(rest_limits.until, excluded.until)",
                (key, seconds),
            )
        self.blocks += 1
