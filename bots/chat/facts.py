"""The conversation facts the adapters need, answered from the store (so no adapter touches
it): first sightings, which message shows a reply, feedback, the persona that last spoke in a
place, leases. A store that does not answer gives a safe "unknown" where routing can go on
without it (the message is then refused by the chat service with a short notice).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TypeVar

from bots.chat.model import Feedback, Turn
from bots.store.base import ConversationStore, Held, RestLimits, StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

HISTORY_LIMIT = 40


class ConversationFacts:
    """The adapter-facing half of the chat service (`ChatService` extends it)."""

    store: ConversationStore

    async def reset(self, platform: str, place: str) -> int:
        """Forget a conversation's history (its turns stay for feedback)."""
        conversation_id = await self.store.conversation_id(platform, place)
        return await self.store.forget(conversation_id)

    async def first_sighting(self, platform: str, event_key: str, ttl_s: float) -> bool:
        """True once per platform event (a retry, a replay or a restart does not repeat it)."""
        try:
            return await self.store.first_sighting(f"{platform}:{event_key}", ttl_s)
        except StoreUnavailable as exc:
            # Unsure whether another instance saw it: go on, and `start` says the short notice.
            log.warning("could not check event %s:%s: %s", platform, event_key, exc)
            return True

    async def _fact(self, work: Awaitable[T], unknown: T) -> T:
        """A fact for routing a message; `unknown` while the store does not answer (the
        message is then refused by `start` with a short notice, not by a failing handler)."""
        try:
            return await work
        except StoreUnavailable as exc:
            log.warning("conversation store: %s", exc)
            return unknown

    async def try_lease(self, name: str) -> Held | None:
        """Hold `name` (a gateway shard) while no other instance does; None otherwise (and
        while the store does not answer)."""
        try:
            return await self.store.try_lease(name)
        except StoreUnavailable as exc:
            log.warning("could not ask for lease %s: %s", name, exc)
            return None

    @property
    def rest_limits(self) -> RestLimits | None:
        """REST rate-limit blocks shared with the other instances (None on one machine)."""
        return self.store.rest_limits

    def peers(self, adapter: str) -> int:
        """How many live instances run `adapter` (at least this one)."""
        return max(1, self.store.peers(adapter))

    async def shown(self, turn_id: int, platform_message_id: str) -> None:
        """Remember which platform message shows a reply (for follow-ups and reactions)."""
        try:
            await self.store.set_message_id(turn_id, platform_message_id)
        except StoreUnavailable as exc:
            # The reply shows; only follow-ups by reply and reactions on it will not find it.
            log.warning("reply %s shown but not linked to its message: %s", turn_id, exc)

    async def answered(self, platform: str, platform_message_id: str) -> Turn | None:
        """The reply turn a platform message shows, if it shows one of ours (None while the
        store does not answer)."""
        turn = await self._fact(self.store.turn_by_message(platform, platform_message_id), None)
        return turn if turn is not None and turn.role == "assistant" else None

    async def knows_message(self, platform: str, platform_message_id: str) -> bool:
        """Whether a platform message is one the bot answered or one showing its reply."""
        turn = await self._fact(self.store.turn_by_message(platform, platform_message_id), None)
        return turn is not None

    async def place_of_reply(
        self, platform: str, platform_message_id: str
    ) -> tuple[str, str] | None:
        """(place, persona id) of the conversation a reply shown by this message belongs to."""
        turn = await self.answered(platform, platform_message_id)
        if turn is None:
            return None
        place = await self._fact(self.store.place_of(turn.conversation_id), None)
        return (place[1], turn.persona_id) if place else None

    async def last_persona(self, platform: str, place: str) -> str | None:
        """The persona that last answered in a place (pending replies too: a follow-up may
        come while the last reply still streams); None for a place with no reply."""
        try:
            conversation_id = await self.store.conversation_id(platform, place)
            turns = await self.store.turns(conversation_id)
        except StoreUnavailable as exc:
            log.warning("conversation store: %s", exc)
            return None
        for turn in reversed(turns):
            if turn.role == "assistant":
                return turn.persona_id
        return None

    async def history(self, platform: str, place: str, limit: int = HISTORY_LIMIT) -> list[Turn]:
        """The remembered turns of a place, oldest first (what the next reply will see)."""
        conversation_id = await self.store.conversation_id(platform, place)
        return await self.store.history(conversation_id, limit)

    async def react(
        self, platform: str, platform_message_id: str, user_id: str, value: int, *, added: bool
    ) -> bool:
        """A thumbs up (+1) or down (-1) on one of our replies, stored (or removed) as
        feedback; False when the message shows no reply of ours. Idempotent."""
        turn = await self.answered(platform, platform_message_id)
        if turn is None:
            return False
        change = self.store.add_feedback if added else self.store.remove_feedback
        await change(turn.id, user_id, value)
        return True

    async def feedback(self, persona_id: str | None = None) -> list[Feedback]:
        """Feedback with the exchange it judged, newest first (of one persona, or of all)."""
        return await self.store.feedback(persona_id)
