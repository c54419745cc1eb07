"""The conversation store seam: what the chat service and the adapters keep between messages.

Two implementations: `bots.store.sqlite` (one machine, the default) and `bots.store.postgres`
(several instances on one database). Everything several instances must agree on lives behind
this Protocol: conversations and turns, which platform message shows which turn, feedback, the
event de-duplication record, per-user rate budgets, the per-conversation lock, the leases
(a Discord gateway shard) that exactly one instance may hold, and the REST rate-limit blocks of
one bot token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bots.chat.model import Feedback, Turn, TurnStatus


class StoreUnavailable(Exception):
    """The database did not answer; the message is short and safe to show an operator."""


@dataclass(frozen=True)
class StoreHealth:
    """Whether the store answers now, with what, and the other instances it knows."""

    ok: bool
    backend: str
    detail: str
    instances: tuple[dict[str, Any], ...] = ()


class Held(Protocol):
    """A lock or lease this instance holds until `release()` (or until the database says the
    holder is gone: then `lost` is set and another instance may take it)."""

    @property
    def lost(self) -> bool: ...

    async def release(self) -> None: ...


class RestLimits(Protocol):
    """A platform's REST rate-limit blocks shared by the instances on one bot token."""

    @property
    def blocks(self) -> int:
        """Blocks this instance recorded (for /metrics and /status)."""

    @property
    def waits(self) -> int:
        """Requests of this instance that found a live block and waited."""

    async def blocked_for(self, keys: Sequence[str]) -> float:
        """Seconds until none of `keys` is blocked any more (0.0: send now)."""

    async def block(self, key: str, seconds: float) -> None:
        """Block `key` for `seconds` for every instance (a longer block already there stays)."""


class ConversationStore(Protocol):
    """Turns, feedback, de-duplication, rate budgets, locks and leases of one bot."""

    backend: str
    instance_id: str

    @property
    def rest_limits(self) -> RestLimits | None:
        """Shared REST rate-limit blocks; None on one machine (the platform library's own
        handling is all there is)."""

    @property
    def connected(self) -> bool:
        """Whether the store answered this instance's last heartbeat (for metrics)."""

    @property
    def leases(self) -> list[str]:
        """The leases this instance holds now."""

    def peers(self, adapter: str) -> int:
        """Live instances running `adapter` (this one included once it runs it), as of the
        last heartbeat: how many share its leases."""

    async def open(self) -> None:
        """Connect, migrate the schema, mark replies of dead instances interrupted."""

    async def close(self) -> None: ...

    async def health(self) -> StoreHealth: ...

    def publish(self, facts: Callable[[], dict[str, Any]]) -> None:
        """What this instance tells the others (persona hashes, connections), read at each
        heartbeat and shown by every instance's /status."""

    async def conversation_id(self, platform: str, place: str) -> int: ...

    async def history(self, conversation_id: int, limit: int = 50) -> list[Turn]:
        """The latest `limit` remembered turns, oldest first (interrupted replies excluded)."""

    async def turns(self, conversation_id: int) -> list[Turn]:
        """Every turn, in order, whatever its status (for inspection and tests)."""

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
        """Store a turn; an assistant reply also records what it was made from (the persona's
        content hash and `bots.chat.provenance.made_from`), for `bots export`."""

    async def finish_turn(
        self,
        turn_id: int,
        content: str,
        status: TurnStatus,
        sources: Sequence[dict[str, Any]] = (),
    ) -> None: ...

    async def set_message_id(self, turn_id: int, platform_message_id: str) -> None:
        """Remember which platform message shows a turn (for replies and reactions)."""

    async def forget(self, conversation_id: int) -> int:
        """`/reset`: later replies no longer see earlier turns; they stay for feedback."""

    async def turn_by_message(self, platform: str, platform_message_id: str) -> Turn | None: ...

    async def place_of(self, conversation_id: int) -> tuple[str, str] | None: ...

    async def conversations(self) -> list[tuple[int, str, str]]:
        """Every conversation as (id, platform, place), oldest first (for `bots export`)."""

    async def secret(self, name: str) -> str:
        """This store's secret `name` (random, made on first use, kept with the conversations:
        the pseudonyms of an export stay the same across runs, machines and `bots db copy`)."""

    async def add_feedback(self, turn_id: int, user_id: str, value: int) -> None:
        """Record a reaction; a user's later reaction on the same reply replaces the earlier."""

    async def remove_feedback(self, turn_id: int, user_id: str, value: int) -> None: ...

    async def feedback(self, persona_id: str | None = None) -> list[Feedback]:
        """Feedback with the question and answer it was about, newest first."""

    async def first_sighting(self, key: str, ttl_s: float) -> bool:
        """True the first time `key` is seen within `ttl_s` (by any instance, across restarts)."""

    async def take_budget(self, key: str, limit: int, window_s: float) -> float:
        """Charge one message to `key`'s budget of `limit` per `window_s` (sliding window): 0.0
        when allowed, else the seconds to wait (nothing charged)."""

    async def lock_conversation(self, conversation_id: int, timeout_s: float) -> Held | None:
        """Hold the conversation so no other instance answers in it meanwhile; None when it was
        still held by another after `timeout_s`."""

    async def try_lease(self, name: str) -> Held | None:
        """Hold `name` (a gateway shard) if no live instance holds it; None otherwise."""
