"""The conversation store of several instances: PostgreSQL through psycopg 3 and its pool.

psycopg 3 rather than asyncpg: it is the maintained PostgreSQL driver with a native asyncio
API *and* a maintained pool (psycopg_pool) that checks and replaces broken connections after a
database restart, it speaks libpq's connection strings and environment (PGPASSWORD, sslmode,
Unix sockets) exactly as `psql` does, and a binary wheel needs no compiler.

What several instances share goes through the database: a unique key answers "seen before?",
a session advisory lock holds a conversation while a reply is written (`bots.store.held`),
and one long-lived connection per instance (`Keeper`) holds the instance's own advisory lock and
its leases (Discord shards). When an instance dies its connection closes and PostgreSQL drops
those locks at once: its leases become free and its pending replies are marked interrupted by
the next sweep of any live instance.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from bots.chat.model import Feedback, Turn, TurnStatus
from bots.store.base import Held, StoreHealth, StoreUnavailable
from bots.store.held import HeldConversations
from bots.store.keeper import Keeper
from bots.store.limits import PostgresRestLimits
from bots.store.migrations import SchemaTooNew, migrate
from bots.store.rows import TURN_COLUMNS, feedback_of, turn_of

log = logging.getLogger(__name__)
# The pool logs every failed reconnection attempt; the keeper says "unreachable" and "reachable
# again" once per outage instead.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

# How long a query may wait for a pooled connection, and run, before the caller hears why.
CONNECT_TIMEOUT_S = 3
QUERY_WAIT_S = 3.0
STATEMENT_TIMEOUT_MS = 5000
NOW = "extract(epoch from clock_timestamp())::float8"
# This store's secret `name`: made with the given random value the first time, read after.
SECRET_SQL = (
    "WITH made AS (INSERT INTO store_secrets (name, value) VALUES (%s, %s) "
    "ON CONFLICT (name) DO NOTHING RETURNING value) SELECT value FROM made "
    "UNION ALL SELECT value FROM store_secrets WHERE name=%s LIMIT 1"
)


def describe(url: str) -> str:
    """host:port/dbname of a connection string, without user or password (for logs)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "an unreadable database_url"
    host = info.get("host") or "localhost"
    return f"{host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


class PostgresStore:
    """The `ConversationStore` on a PostgreSQL database shared by every instance."""

    backend = "postgresql"

    def __init__(
        self, url: str, instance_id: str, *, pool_size: int = 10, held_size: int = 32
    ) -> None:
        self.url = url
        self.instance_id = instance_id
        self.where = describe(url)
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            # pg_stat_activity shows which instance holds which connection.
            "application_name": f"bots:{instance_id}"[:63],
        }
        self._pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs=kwargs,
            # A connection is checked as it is handed out (one round trip): after a database
            # restart the pooled ones are all broken, and the first message must not pay.
            check=AsyncConnectionPool.check_connection,
            open=False,
            timeout=QUERY_WAIT_S,
            reconnect_timeout=0,  # keep trying however long the outage lasts
            name="bots",
        )
        self._conversations = HeldConversations(url, kwargs, held_size, self._failed)
        self.keeper = Keeper(url, instance_id, kwargs, self._migrated)
        self.rest_limits = PostgresRestLimits(self._conn)
        self._ready = False

    @property
    def connected(self) -> bool:
        return self.keeper.connected

    @property
    def leases(self) -> list[str]:
        return self.keeper.leases

    def peers(self, adapter: str) -> int:
        return self.keeper.peers.get(adapter, 0)

    async def open(self) -> None:
        """Open the pool and migrate; an unreachable database is retried in the background."""
        try:
            psycopg.conninfo.conninfo_to_dict(self.url)
        except psycopg.ProgrammingError as exc:
            raise StoreUnavailable(f"database_url: cannot read it ({exc})") from None
        await self._pool.open(wait=False)
        try:
            await self.keeper.start()
        except BaseException:
            await self._pool.close()
            raise

    async def _migrated(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Run by the keeper once per (re)connection, before it takes the instance lock."""
        if not self._ready:
            try:
                ran = await migrate(conn)
            except SchemaTooNew as exc:
                log.critical("%s", exc)
                raise
            if ran:
                log.info("database %s: %d migrations applied", self.where, ran)
            self._ready = True

    async def close(self) -> None:
        await self.keeper.stop()
        await self._pool.close()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if not self._ready:
            raise StoreUnavailable(f"the database {self.where} is not reachable yet")
        try:
            async with self._pool.connection(timeout=QUERY_WAIT_S) as conn:
                yield conn
        except PoolTimeout:
            raise StoreUnavailable(f"the database {self.where} is not answering") from None
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(
                f"the database {self.where} failed: {_first_line(exc)}"
            ) from None

    def _failed(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"the database {self.where} failed: {_first_line(exc)}")

    async def _one(self, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None:
        async with self._conn() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(sql, args)
            return await cursor.fetchone() if cursor.description else None

    async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(sql, args)
            return await cursor.fetchall()

    async def _run(self, sql: str, args: Sequence[Any] = ()) -> int:
        async with self._conn() as conn:
            cursor = await conn.execute(sql, args)
            return cursor.rowcount

    async def health(self) -> StoreHealth:
        started = time.perf_counter()
        try:
            rows = await self._all(
                f"SELECT id, started_at, seen_at, facts, {NOW} AS now FROM instances "
                f"WHERE seen_at > {NOW} - 60 ORDER BY started_at"
            )
        except StoreUnavailable as exc:
            return StoreHealth(False, self.backend, str(exc))
        instances = tuple(
            {
                **(r["facts"] or {}),
                "id": r["id"],
                "seen_s_ago": round(r["now"] - r["seen_at"], 1),
                "self": r["id"] == self.instance_id,
            }
            for r in rows
        )
        detail = f"{self.where} answered in {(time.perf_counter() - started) * 1000:.0f} ms"
        return StoreHealth(self.keeper.connected, self.backend, detail, instances)

    def publish(self, facts: Callable[[], dict[str, Any]]) -> None:
        self.keeper.facts = facts

    async def conversation_id(self, platform: str, place: str) -> int:
        row = await self._one(
            "INSERT INTO conversations (platform, place, created_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (platform, place) DO UPDATE SET platform=excluded.platform "
            "RETURNING id",
            (platform, place, time.time()),
        )
        assert row is not None
        return int(row["id"])

    async def history(self, conversation_id: int, limit: int = 50) -> list[Turn]:
        rows = await self._all(
            f"SELECT {TURN_COLUMNS} FROM turns WHERE conversation_id=%s AND forgotten=0 "
            "AND status='complete' ORDER BY id DESC LIMIT %s",
            (conversation_id, limit),
        )
        return [turn_of(r) for r in reversed(rows)]

    async def turns(self, conversation_id: int) -> list[Turn]:
        rows = await self._all(
            f"SELECT {TURN_COLUMNS} FROM turns WHERE conversation_id=%s ORDER BY id",
            (conversation_id,),
        )
        return [turn_of(r) for r in rows]

    async def add_turn(
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
        row = await self._one(
            "INSERT INTO turns (conversation_id, role, content, persona_id, user_id, status, "
            "sources, platform_message_id, created_at, owner, persona_version, made_from) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
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
                self.instance_id if status == "pending" else "",
                persona_version,
                json.dumps(dict(made_from or {})),
            ),
        )
        assert row is not None
        return int(row["id"])

    async def finish_turn(
        self,
        turn_id: int,
        content: str,
        status: TurnStatus,
        sources: Sequence[dict[str, Any]] = (),
    ) -> None:
        await self._run(
            "UPDATE turns SET content=%s, status=%s, sources=%s WHERE id=%s",
            (content, status, json.dumps(list(sources)), turn_id),
        )

    async def set_message_id(self, turn_id: int, platform_message_id: str) -> None:
        await self._run(
            "UPDATE turns SET platform_message_id=%s WHERE id=%s", (platform_message_id, turn_id)
        )

    async def forget(self, conversation_id: int) -> int:
        return await self._run(
            "UPDATE turns SET forgotten=1 WHERE conversation_id=%s AND forgotten=0",
            (conversation_id,),
        )

    async def turn_by_message(self, platform: str, platform_message_id: str) -> Turn | None:
        columns = ", ".join(f"t.{c.strip()}" for c in TURN_COLUMNS.split(","))
        row = await self._one(
            f"SELECT {columns} FROM turns t JOIN conversations c ON c.id=t.conversation_id "
            "WHERE c.platform=%s AND t.platform_message_id=%s ORDER BY t.id DESC LIMIT 1",
            (platform, platform_message_id),
        )
        return turn_of(row) if row else None

    async def place_of(self, conversation_id: int) -> tuple[str, str] | None:
        row = await self._one(
            "SELECT platform, place FROM conversations WHERE id=%s", (conversation_id,)
        )
        return (row["platform"], row["place"]) if row else None

    async def conversations(self) -> list[tuple[int, str, str]]:
        rows = await self._all("SELECT id, platform, place FROM conversations ORDER BY id")
        return [(int(r["id"]), r["platform"], r["place"]) for r in rows]

    async def secret(self, name: str) -> str:
        row = await self._one(SECRET_SQL, (name, secrets.token_hex(32), name))
        assert row is not None
        return str(row["value"])

    async def add_feedback(self, turn_id: int, user_id: str, value: int) -> None:
        await self._run(
            "INSERT INTO feedback (turn_id, user_id, value, created_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (turn_id, user_id) DO UPDATE SET value=excluded.value, "
            "created_at=excluded.created_at",
            (turn_id, user_id, value, time.time()),
        )

    async def remove_feedback(self, turn_id: int, user_id: str, value: int) -> None:
        await self._run(
            "DELETE FROM feedback WHERE turn_id=%s AND user_id=%s AND value=%s",
            (turn_id, user_id, value),
        )

    async def feedback(self, persona_id: str | None = None) -> list[Feedback]:
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
            query += "WHERE t.persona_id=%s "
            args = (persona_id,)
        rows = await self._all(query + "ORDER BY f.created_at DESC", args)
        return [feedback_of(r) for r in rows]

    async def first_sighting(self, key: str, ttl_s: float) -> bool:
        async with self._conn() as conn:
            # Expired keys go a few at a time: no instance ever pays for a big sweep.
            await conn.execute(
                "DELETE FROM seen_events WHERE key IN (SELECT key FROM seen_events "
                f"WHERE seen_at < {NOW} - %s LIMIT 100)",
                (ttl_s,),
            )
            cursor = await conn.execute(
                f"INSERT INTO seen_events (key, seen_at) VALUES (%s, {NOW}) "
                "ON CONFLICT (key) DO NOTHING",
                (key,),
            )
            return cursor.rowcount == 1

    async def take_budget(self, key: str, limit: int, window_s: float) -> float:
        if limit <= 0:
            return 0.0
        async with self._conn() as conn, conn.transaction():
            # One user's charges are counted and added under one lock: two instances never
            # both let the last allowed message through.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"budget:{key}",))
            await conn.execute(
                f"DELETE FROM budget_charges WHERE key=%s AND at <= {NOW} - %s", (key, window_s)
            )
            cursor = await conn.execute(
                f"SELECT count(*), min(at), {NOW} FROM budget_charges WHERE key=%s", (key,)
            )
            row = await cursor.fetchone()
            assert row is not None
            count, oldest, now = int(row[0]), row[1], float(row[2])
            if count >= limit:
                return max(0.001, float(oldest) + window_s - now)
            await conn.execute(f"INSERT INTO budget_charges (key, at) VALUES (%s, {NOW})", (key,))
        return 0.0

    async def lock_conversation(self, conversation_id: int, timeout_s: float) -> Held | None:
        if not self._ready or not self.keeper.connected:
            raise StoreUnavailable(f"the database {self.where} is not reachable")
        return await self._conversations.hold(conversation_id, timeout_s)

    async def try_lease(self, name: str) -> Held | None:
        return await self.keeper.try_lease(name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
