"""Slack messages: the `message` and `app_mention` listeners and their Bolt middleware.

A message is answered when it @mentions the app, is a DM, continues a thread the bot replies in,
or is posted in a channel bound to a persona. The path of one message, top to bottom, each step
a listener middleware (`middleware()`, in order) and then the listener:
parse (malformed -> ignored) -> skip bots, own and edited messages -> place allowlist ->
addressed to us? -> first sighting of channel+ts (Slack retries, the `app_mention`/`message`
twin) -> `answer`: choose persona -> the shared reply lifecycle (`bots.adapters.delivery`):
admitted (access and rate limit), streamed into the thread, the sources, and the message that
shows the reply remembered (for follow-ups and thumbs-up/down feedback).

A middleware that drops an event answers 200 itself: an event no listener takes would get
Bolt's 404, and Slack retries those.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError

from bots.adapters.delivery import Delivery
from bots.adapters.slack.audience import SlackAudience
from bots.adapters.slack.events import SlackMessage, parse_message
from bots.adapters.slack.format import from_mrkdwn, to_mrkdwn
from bots.adapters.slack.reply import error_code
from bots.adapters.slack.surface import SlackPlace, SlackSurface
from bots.chat import notices
from bots.chat.model import ChatRefused, Incoming
from bots.chat.router import route
from bots.chat.service import ChatService
from bots.engine.base import ChatMessage
from bots.persona.registry import PersonaRegistry

log = logging.getLogger(__name__)

PLATFORM: Final = "slack"
MESSAGE: Final = "slack_message"  # where the parsed message waits in Bolt's context
# Threads the bot replies in, kept in memory for the cheap check (the store knows the rest).
MAX_REMEMBERED_THREADS = 10_000
# Messages of a thread read from Slack when the store has none of it.
THREAD_HISTORY_LIMIT = 20

Next = Callable[[], Awaitable[None]]
DROPPED = BoltResponse(status=200, body="")


class SlackMessages:
    """Answers messages; shared with the slash commands: `joined` and `say_in_thread`."""

    def __init__(
        self,
        service: ChatService,
        registry: PersonaRegistry,
        delivery: Delivery,
        place: SlackPlace,
        *,
        default_persona: str,
        accepting: Callable[[], bool],
        tracked: Callable[[], AbstractAsyncContextManager[None]],
    ) -> None:
        self.service = service
        self.registry = registry
        self.delivery = delivery
        self.place = place
        self.default_persona = default_persona
        self.accepting = accepting
        self.tracked = tracked
        self.bot_user_id = ""
        self.team_id = ""
        self.audience = SlackAudience(place.client)
        self._threads: dict[str, None] = {}
        self._replies_at = -place.limits.replies_interval_s

    def middleware(self) -> list[Callable[..., Awaitable[BoltResponse | None]]]:
        """The filters in the order the module docstring gives."""
        return [self._parsed, self._place_allowed, self._addressed, self._first_sighting]

    async def _parsed(
        self, event: dict[str, Any], body: dict[str, Any], context: AsyncBoltContext, next: Next
    ) -> BoltResponse | None:
        message = parse_message(event, body.get("team_id"))
        if message is None or message.user == self.bot_user_id or not self.accepting():
            return DROPPED
        context[MESSAGE] = message
        await next()
        return None

    async def _place_allowed(self, context: AsyncBoltContext, next: Next) -> BoltResponse | None:
        message: SlackMessage = context[MESSAGE]
        if not self.service.place_allowed(channel_id=message.channel, team_id=message.team):
            return DROPPED
        await next()
        return None

    async def _addressed(self, context: AsyncBoltContext, next: Next) -> BoltResponse | None:
        """For the bot: a mention, a DM, a bound channel or a thread the bot replies in."""
        message: SlackMessage = context[MESSAGE]
        addressed = (
            message.mention or message.is_dm or f"<@{self.bot_user_id}" in message.text
        ) or any(message.channel in p.slack_channels for p in self.registry.personas())
        if not addressed and not (
            message.in_thread and await self._bot_in_thread(message.channel, message.root_ts)
        ):
            return DROPPED
        await next()
        return None

    async def _first_sighting(self, context: AsyncBoltContext, next: Next) -> BoltResponse | None:
        message: SlackMessage = context[MESSAGE]
        ttl = self.place.limits.dedup_ttl_s
        if not await self.service.first_sighting(PLATFORM, message.key, ttl):
            return DROPPED
        await next()
        return None

    def joined(self, place: str) -> None:
        """Remember a thread the bot replies in (the oldest are forgotten past a bound)."""
        self._threads[place] = None
        if len(self._threads) > MAX_REMEMBERED_THREADS:
            del self._threads[next(iter(self._threads))]

    async def _bot_in_thread(self, channel: str, root_ts: str) -> bool:
        place = f"{channel}:{root_ts}"
        # Else the thread started with a message the bot answered (known across restarts).
        return place in self._threads or await self.service.knows_message(PLATFORM, place)

    async def answer(self, context: AsyncBoltContext) -> None:
        """The listener: choose the persona and deliver the reply in the message's thread."""
        message: SlackMessage = context[MESSAGE]
        try:
            async with self.tracked():
                await self._answer(message)
        except SlackApiError as exc:
            log.warning("slack: replying to %s failed: %s", message.key, error_code(exc))

    async def _answer(self, message: SlackMessage) -> None:
        text = from_mrkdwn(message.text, strip_user=self.bot_user_id)
        place = f"{message.channel}:{message.root_ts}"
        thread_persona = (
            await self.service.last_persona(PLATFORM, place) if message.in_thread else None
        )
        chosen = route(
            self.registry.personas(),
            text,
            platform=PLATFORM,
            channel_id=message.channel,
            default=thread_persona or self.default_persona,
        )
        persona = self.registry.get(chosen.persona_id) if chosen.persona_id else None
        if persona is None:
            await self.place.poster.post(
                message.channel, notices.NO_PERSONAS, thread_ts=message.root_ts
            )
            return
        if not chosen.text:
            await self.place.poster.post(
                message.channel,
                to_mrkdwn(notices.greeting(persona)),
                thread_ts=message.root_ts,
                identity=self.place.identity(persona),
            )
            return
        recipient = None if message.is_dm else (message.user, message.team or self.team_id)
        surface = SlackSurface(
            self.place, message.channel, message.root_ts, message.ts, message.user, recipient
        )
        reader = await self.audience.reader(
            message.channel,
            message.user,
            channel_type=message.channel_type,
            bot_user=self.bot_user_id,
        )
        incoming = Incoming(
            PLATFORM,
            place,
            message.user,
            chosen.text,
            persona.id,
            message_id=message.key,
            reader=reader,
        )
        try:
            admission = await self.delivery.admit(incoming)
        except ChatRefused as refused:
            await self.delivery.refused(refused, message.user, surface)
            return
        # A thread the store has never seen is read from Slack, once admitted.
        if message.in_thread and thread_persona is None:
            admission = admission.with_history(await self._thread_history(message))
        self.joined(place)
        await self.delivery.deliver(admission, surface)

    async def _thread_history(self, message: SlackMessage) -> tuple[ChatMessage, ...]:
        """A thread's earlier messages, read from Slack at most once a minute."""
        now = time.monotonic()
        if now - self._replies_at < self.place.limits.replies_interval_s:
            return ()
        self._replies_at = now
        try:
            response = await self.place.client.conversations_replies(
                channel=message.channel, ts=message.root_ts, limit=THREAD_HISTORY_LIMIT + 1
            )
        except SlackApiError as exc:
            log.info("slack: could not read thread %s: %s", message.root_ts, error_code(exc))
            return ()
        history: list[ChatMessage] = []
        for item in response.get("messages") or []:
            if not isinstance(item, dict) or item.get("ts") == message.ts:
                continue
            text = item.get("text")
            if not isinstance(text, str) or not text.strip():
                continue
            mine = bool(item.get("bot_id")) or item.get("user") == self.bot_user_id
            plain = from_mrkdwn(text, strip_user=self.bot_user_id)
            history.append(ChatMessage("assistant" if mine else "user", plain))
        return tuple(history[-THREAD_HISTORY_LIMIT:])
