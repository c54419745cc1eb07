"""The one-machine conversation store: `SqliteStore` is the `ConversationStore` on a
`SqliteFile`, running the (millisecond) queries on a worker thread so the event loop never waits
on the disk. One process owns the file, so the rate budgets, locks and leases live in that
process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bots.chat.model import Feedback, Turn, TurnStatus
from bots.chat.policy import RateLimiter
from bots.store.base import Held, RestLimits, StoreHealth
from bots.store.sqlite_file import SqliteFile

T = TypeVar("T")


class _Released:
    """What SQLite's locks and leases are: one process holds everything it asks for."""

    def __init__(self, on_release: Callable[[], None] = lambda: None) -> None:
        self._on_release = on_release

    @property
    def lost(self) -> bool:
        return False

    async def release(self) -> None:
        self._on_release()


class SqliteStore:
    """The `ConversationStore` of one process on one SQLite file."""

    backend = "sqlite"
    rest_limits: RestLimits | None = None  # one process: discord.py's own buckets suffice

    def __init__(self, path: Path, instance_id: str = "") -> None:
        self.path = path
        self.instance_id = instance_id
        self._file: SqliteFile | None = None
        self._budgets: dict[tuple[int, float], RateLimiter] = {}
        self._leases: set[str] = set()
        self._facts: Callable[[], dict[str, Any]] = dict

    @property
    def connected(self) -> bool:
        return True

    @property
    def leases(self) -> list[str]:
        return sorted(self._leases)

    def peers(self, adapter: str) -> int:
        return 1

    @property
    def file(self) -> SqliteFile:
        """The open file (plain calls, for tools and tests)."""
        if self._file is None:
            self._file = SqliteFile(self.path)
        return self._file

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def open(self) -> None:
        await self._run(lambda: self.file)

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    async def health(self) -> StoreHealth:
        me = {**self._facts(), "id": self.instance_id, "self": True}
        return StoreHealth(True, self.backend, str(self.path), (me,))

    def publish(self, facts: Callable[[], dict[str, Any]]) -> None:
        self._facts = facts

    async def conversation_id(self, platform: str, place: str) -> int:
        return await self._run(self.file.conversation_id, platform, place)

    async def history(self, conversation_id: int, limit: int = 50) -> list[Turn]:
        return await self._run(self.file.history, conversation_id, limit)

    async def turns(self, conversation_id: int) -> list[Turn]:
        return await self._run(self.file.turns, conversation_id)

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
        return await self._run(
            lambda: self.file.add_turn(
                conversation_id,
                role,
                content,
                persona_id,
                user_id=user_id,
                status=status,
                sources=sources,
                platform_message_id=platform_message_id,
                persona_version=persona_version,
                made_from=made_from,
            )
        )

    async def finish_turn(
        self,
        turn_id: int,
        content: str,
        status: TurnStatus,
        sources: Sequence[dict[str, Any]] = (),
    ) -> None:
        await self._run(self.file.finish_turn, turn_id, content, status, sources)

    async def set_message_id(self, turn_id: int, platform_message_id: str) -> None:
        await self._run(self.file.set_message_id, turn_id, platform_message_id)

    async def forget(self, conversation_id: int) -> int:
        return await self._run(self.file.forget, conversation_id)

    async def turn_by_message(self, platform: str, platform_message_id: str) -> Turn | None:
        return await self._run(self.file.turn_by_message, platform, platform_message_id)

    async def conversations(self) -> list[tuple[int, str, str]]:
        return await self._run(self.file.conversations)

    async def secret(self, name: str) -> str:
        return await self._run(self.file.secret, name)

    async def place_of(self, conversation_id: int) -> tuple[str, str] | None:
        return await self._run(self.file.place_of, conversation_id)

    async def add_feedback(self, turn_id: int, user_id: str, value: int) -> None:
        await self._run(self.file.add_feedback, turn_id, user_id, value)

    async def remove_feedback(self, turn_id: int, user_id: str, value: int) -> None:
        await self._run(self.file.remove_feedback, turn_id, user_id, value)

    async def feedback(self, persona_id: str | None = None) -> list[Feedback]:
        return await self._run(self.file.feedback, persona_id)

    async def first_sighting(self, key: str, ttl_s: float) -> bool:
        return await self._run(self.file.first_sighting, key, ttl_s)

    async def take_budget(self, key: str, limit: int, window_s: float) -> float:
        limiter = self._budgets.setdefault((limit, window_s), RateLimiter(limit, window_s))
        return limiter.check(key).retry_after_s

    async def lock_conversation(self, conversation_id: int, timeout_s: float) -> Held | None:
        # One process answers every message: replies in one place may overlap, as they always
        # have on one machine (the engine serves them side by side).
        return _Released()

    async def try_lease(self, name: str) -> Held | None:
        if name in self._leases:
            return None
        self._leases.add(name)
        return _Released(lambda: self._leases.discard(name))
