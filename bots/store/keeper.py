"""One instance's standing connection to PostgreSQL: who it is, whether it lives, what it holds.

The keeper holds an advisory lock of its own (a random key, recorded in `instances`) and the
leases it was granted (gateway shards) on one connection, and beats once a second: it records
what the instance publishes for /status and sweeps the replies of dead instances (pending turns
whose owner holds no instance lock any more) to `interrupted`. When the connection breaks, every
lease is lost at once (another instance may already have taken it) and the keeper reconnects by
itself, however long the outage lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from bots.store.migrations import NAMESPACE

log = logging.getLogger(__name__)

INSTANCE_NS = NAMESPACE + 1
LEASE_NS = NAMESPACE + 2
CONVERSATION_NS = NAMESPACE + 3
TICK_S = 1.0
# An instance whose lock is gone is taken for dead once its last beat is this old: after a
# database restart every lock is gone until each instance reconnects, and none of them is dead.
STALE_S = 3.0
# Instances not seen for this long are removed from `instances` (their turns were swept long ago).
FORGET_INSTANCE_S = 3600.0
NOW = "extract(epoch from clock_timestamp())::float8"

SWEEP = f"""
UPDATE turns SET status = 'interrupted'
WHERE status = 'pending' AND owner NOT IN (
    SELECT id FROM instances WHERE seen_at > {NOW} - {STALE_S}
    UNION
    SELECT i.id FROM instances i JOIN pg_locks l
      ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
     AND l.classid::bigint = {INSTANCE_NS} AND l.objid::bigint = i.lock_key
)
"""


PEERS = f"""
SELECT adapter, count(*) FROM instances, jsonb_object_keys(facts->'adapters') AS adapter
WHERE seen_at > {NOW} - {STALE_S} AND jsonb_typeof(facts->'adapters') = 'object'
GROUP BY adapter
"""


class Keeper:
    """The instance lock, the leases and the heartbeat (see the module docstring)."""

    def __init__(
        self,
        url: str,
        instance_id: str,
        kwargs: dict[str, Any],
        on_connect: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]],
    ) -> None:
        self.url = url
        self.instance_id = instance_id
        self.facts: Callable[[], dict[str, Any]] = dict
        self._kwargs = kwargs
        self._on_connect = on_connect
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._held: set[str] = set()
        self._generation = 0
        self._task: asyncio.Task[None] | None = None
        self._started_at = time.time()
        self._down_since: float | None = None
        self.swept = 0
        # Live instances per adapter they run ({"discord": 2, ...}), as of the last beat.
        self.peers: dict[str, int] = {}

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    @property
    def leases(self) -> list[str]:
        return sorted(self._held)

    async def start(self) -> None:
        """Connect now if the database answers (else keep trying in the background)."""
        await self._tick()
        self._task = asyncio.create_task(self._beat())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.execute("DELETE FROM instances WHERE id=%s", (self.instance_id,))
            await conn.close()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self._tick()
            except Exception:  # a schema too new, a bug: said, and the beat goes on
                log.exception("database heartbeat failed")

    async def _tick(self) -> None:
        async with self._lock:
            try:
                if not self.connected:
                    await self._connect()
                assert self._conn is not None
                await self._conn.execute(
                    f"UPDATE instances SET seen_at={NOW}, facts=%s WHERE id=%s",
                    (json.dumps(self._facts()), self.instance_id),
                )
                cursor = await self._conn.execute(PEERS)
                self.peers = {str(r[0]): int(r[1]) for r in await cursor.fetchall()}
                cursor = await self._conn.execute(SWEEP)
                if cursor.rowcount:
                    self.swept += cursor.rowcount
                    log.warning(
                        "marked %d replies of stopped instances interrupted", cursor.rowcount
                    )
                await self._conn.execute(
                    f"DELETE FROM instances WHERE seen_at < {NOW} - %s", (FORGET_INSTANCE_S,)
                )
                if self._down_since is not None:
                    log.info("database reachable again after %.1fs", time.time() - self._down_since)
                    self._down_since = None
            except (psycopg.Error, OSError) as exc:
                self._lost(exc)

    def _facts(self) -> dict[str, Any]:
        try:
            facts = dict(self.facts())
        except Exception:  # what /status shows must never stop the heartbeat
            log.exception("reading this instance's facts failed")
            facts = {}
        return {**facts, "leases": self.leases}

    async def _connect(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self.url, **self._kwargs)
        try:
            await self._on_connect(conn)
            while True:
                key = random.randint(1, 2**31 - 1)
                cursor = await conn.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)", (INSTANCE_NS, key)
                )
                row = await cursor.fetchone()
                if row and row[0]:
                    break
            await conn.execute(
                "INSERT INTO instances (id, lock_key, started_at, seen_at) "
                f"VALUES (%s, %s, %s, {NOW}) "
                "ON CONFLICT (id) DO UPDATE SET lock_key=excluded.lock_key",
                (self.instance_id, key, self._started_at),
            )
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self._generation += 1

    def _lost(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.time()
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.error("database unreachable (%s); retrying every %gs", reason, TICK_S)
        if self._held:
            log.warning("leases lost with the database connection: %s", ", ".join(self.leases))
        self._held.clear()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            asyncio.get_running_loop().create_task(conn.close())

    async def try_lease(self, name: str) -> _Lease | None:
        """Hold `name` unless another live instance does (or the database is down)."""
        async with self._lock:
            if not self.connected or name in self._held:
                return None
            assert self._conn is not None
            try:
                cursor = await self._conn.execute(
                    "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LEASE_NS, name)
                )
                row = await cursor.fetchone()
            except (psycopg.Error, OSError) as exc:
                self._lost(exc)
                return None
            if not (row and row[0]):
                return None
            self._held.add(name)
            return _Lease(self, name, self._generation)

    async def release(self, name: str, generation: int) -> None:
        async with self._lock:
            if generation != self._generation or name not in self._held:
                return
            self._held.discard(name)
            assert self._conn is not None
            try:
                await self._conn.execute(
                    "SELECT pg_advisory_unlock(%s, hashtext(%s))", (LEASE_NS, name)
                )
            except (psycopg.Error, OSError) as exc:
                self._lost(exc)

    def holds(self, name: str, generation: int) -> bool:
        return generation == self._generation and name in self._held and self.connected


class _Lease:
    def __init__(self, keeper: Keeper, name: str, generation: int) -> None:
        self._keeper, self._name, self._generation = keeper, name, generation

    @property
    def lost(self) -> bool:
        return not self._keeper.holds(self._name, self._generation)

    async def release(self) -> None:
        await self._keeper.release(self._name, self._generation)
