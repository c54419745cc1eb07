"""Conversations held by the replies under way, one PostgreSQL connection each.

A reply holds its conversation with a session advisory lock on a connection of its own (opened
for it: a pool's waiters can outlast a database restart), at most `size` at once, so held
conversations never starve the store's query pool. Closing the connection lets the conversation
go, and so does the connection breaking or its process dying: no other instance waits on a
holder that is gone. Connections per instance: the query pool, these, and the keeper's one.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import psycopg

from bots.store.base import StoreUnavailable
from bots.store.keeper import CONVERSATION_NS

LOCK_POLL_S = 0.05
# How long a reply waits for a connection to hold its conversation on (all busy: many replies).
LOCK_WAIT_S = 10.0


class HeldConversations:
    """Holds conversations for replies (see the module docstring)."""

    def __init__(
        self,
        url: str,
        kwargs: dict[str, Any],
        size: int,
        failed: Callable[[BaseException], StoreUnavailable],
    ) -> None:
        self._url, self._kwargs, self._failed = url, kwargs, failed
        self._slots = asyncio.Semaphore(size)

    async def hold(self, conversation_id: int, timeout_s: float) -> HeldConversation | None:
        """The conversation, once no other instance holds it; None after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        try:
            await asyncio.wait_for(self._slots.acquire(), LOCK_WAIT_S)
        except TimeoutError:
            raise StoreUnavailable(f"{LOCK_WAIT_S:g}s without a free database connection") from None
        try:
            conn = await psycopg.AsyncConnection.connect(self._url, **self._kwargs)
        except psycopg.OperationalError as exc:
            self._slots.release()
            raise self._failed(exc) from None
        held = HeldConversation(conn, self._slots)
        try:
            while True:
                cursor = await conn.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)",
                    (CONVERSATION_NS, conversation_id % 2**31),
                )
                row = await cursor.fetchone()
                if row and row[0]:
                    return held
                if time.monotonic() >= deadline:
                    await held.release()
                    return None
                await asyncio.sleep(LOCK_POLL_S * (1 + random.random()))
        except psycopg.OperationalError as exc:
            await held.release()
            raise self._failed(exc) from None
        except BaseException:
            await held.release()
            raise


class HeldConversation:
    """One held conversation; `release()` closes its connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], slots: asyncio.Semaphore) -> None:
        self._conn, self._slots = conn, slots
        self._released = False

    @property
    def lost(self) -> bool:
        return self._conn.closed

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            await self._conn.close()
        finally:
            self._slots.release()
