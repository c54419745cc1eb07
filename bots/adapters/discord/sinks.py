"""Getting reply text onto Discord: message sinks, retries through outages, persona webhooks.

A reply is shown through a `MessageSink` (see `bots.adapters.render`): a persona webhook in guild
channels (the persona's own name and avatar), plain bot messages where webhooks are not allowed,
or an interaction's response and follow-ups for `/ask`. Every call goes through `deliver`, which
waits out rate limits and outages so a reply is never dropped half-way; no outgoing message can
ping anyone.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
import discord

from bots.adapters.render import MessageSink
from bots.knowledge.model import Hit
from bots.persona.model import Persona

log = logging.getLogger(__name__)

T = TypeVar("T")

MESSAGE_LIMIT = 2000
NO_MENTIONS = discord.AllowedMentions.none()
# `@everyone`/`@here` in model output would ping if mentions were ever allowed; a zero-width
# space after the @ keeps the text readable and inert.
MASS_MENTION = re.compile(r"@(everyone|here)\b")
ZERO_WIDTH_SPACE = "\u200b"
MAX_SOURCES_SHOWN = 3
AVATAR_MAX_BYTES = 8 * 1024 * 1024
WEBHOOK_RETRY_AFTER_S = 600.0
NONCE_BYTES = 12  # 24 hex characters; Discord accepts nonces up to 25


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying a Discord call through 5xx, 429 and connection errors."""

    first_delay_s: float = 0.5
    max_delay_s: float = 10.0
    give_up_after_s: float = 600.0


def defuse_mentions(text: str) -> str:
    """Make `@everyone` and `@here` inert (on top of `allowed_mentions=none`)."""
    return MASS_MENTION.sub("@" + ZERO_WIDTH_SPACE + r"\1", text)


def sources_footer(sources: tuple[Hit, ...]) -> str:
    """A compact one-line list of the documents a reply drew on (Discord subtext)."""
    names: list[str] = []
    for hit in sources:
        name = Path(hit.path).name
        label = f"{name} › {hit.heading}" if hit.heading else name
        if label not in names:
            names.append(label)
    if not names:
        return ""
    shown = " · ".join(names[:MAX_SOURCES_SHOWN])
    more = len(names) - MAX_SOURCES_SHOWN
    return f"-# Sources: {shown}" + (f" (+{more})" if more > 0 else "")


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, discord.DiscordServerError | discord.RateLimited):
        return True
    if isinstance(exc, discord.HTTPException):
        return exc.status == 429  # a 429 discord.py did not wait out itself
    return isinstance(exc, aiohttp.ClientError | OSError | asyncio.TimeoutError)


async def deliver(call: Callable[[], Awaitable[T]], what: str, policy: RetryPolicy) -> T:
    """Run a Discord call, retrying with backoff while Discord is unreachable or overloaded."""
    started = time.monotonic()
    delay = policy.first_delay_s
    while True:
        try:
            return await call()
        except Exception as exc:
            if not _retryable(exc) or time.monotonic() - started + delay > policy.give_up_after_s:
                raise
            log.warning(
                "Discord %s failed (%s); retrying in %.1fs", what, type(exc).__name__, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, policy.max_delay_s)


class DiscordSink(MessageSink, Protocol):
    """A `MessageSink` that can also take back a message it posted."""

    async def delete(self, message_id: str) -> None:
        """Delete a message posted by `send`."""


class ChannelSink:
    """Plain bot messages; the first replies to the user's message, without pinging them."""

    def __init__(
        self,
        channel: discord.abc.Messageable,
        retry: RetryPolicy,
        *,
        reference: discord.Message | None = None,
        prefix: str = "",
    ) -> None:
        self.channel = channel
        self.retry = retry
        self.reference = reference
        self.prefix = prefix
        self._messages: dict[str, discord.Message] = {}

    async def send(self, text: str) -> str:
        first = not self._messages
        # Notices and greetings come here without the renderer's defusing (a second pass
        # changes nothing).
        text = defuse_mentions(text)
        content = self.prefix + text if first else text
        # One nonce for every retry: Discord returns the first message instead of a duplicate.
        nonce = secrets.token_hex(NONCE_BYTES)
        kwargs: dict[str, Any] = {"allowed_mentions": NO_MENTIONS, "nonce": nonce}
        if first and self.reference is not None:
            kwargs["reference"] = self.reference.to_reference(fail_if_not_exists=False)
            kwargs["mention_author"] = False
        message = await deliver(lambda: self.channel.send(content, **kwargs), "send", self.retry)
        self._messages[str(message.id)] = message
        return str(message.id)

    async def edit(self, message_id: str, text: str) -> None:
        message = self._messages[message_id]
        content = self.prefix + text if message_id == next(iter(self._messages)) else text
        await deliver(
            lambda: message.edit(content=content, allowed_mentions=NO_MENTIONS), "edit", self.retry
        )

    async def delete(self, message_id: str) -> None:
        message = self._messages.pop(message_id)
        await deliver(message.delete, "delete", self.retry)


class WebhookSink:
    """Messages through the persona's webhook: its own name and avatar in the channel."""

    def __init__(
        self,
        webhook: discord.Webhook,
        username: str,
        retry: RetryPolicy,
        *,
        thread: discord.abc.Snowflake | None = None,
        fallback: ChannelSink | None = None,
        on_broken: Callable[[], None] | None = None,
    ) -> None:
        self.webhook = webhook
        self.username = username[:80]
        self.retry = retry
        self.thread = thread if thread is not None else discord.utils.MISSING
        self.fallback = fallback
        self.on_broken = on_broken
        self._via_fallback: set[str] = set()
        self._broken = False

    async def send(self, text: str) -> str:
        if self._broken and self.fallback is not None:
            message_id = await self.fallback.send(text)
            self._via_fallback.add(message_id)
            return message_id
        try:
            return await self._send(text)
        except (discord.Forbidden, discord.NotFound):
            if self.fallback is None:
                raise
            # The webhook was deleted or permissions changed: the reply goes on as the bot.
            log.warning("persona webhook unusable; replying with plain messages")
            self._broken = True
            if self.on_broken is not None:
                self.on_broken()
            return await self.send(text)

    async def _send(self, text: str) -> str:
        message = await deliver(
            lambda: self.webhook.send(
                text,
                username=self.username,
                wait=True,
                allowed_mentions=NO_MENTIONS,
                thread=self.thread,
            ),
            "webhook send",
            self.retry,
        )
        return str(message.id)

    async def edit(self, message_id: str, text: str) -> None:
        if message_id in self._via_fallback and self.fallback is not None:
            await self.fallback.edit(message_id, text)
            return
        await deliver(
            lambda: self.webhook.edit_message(
                int(message_id), content=text, allowed_mentions=NO_MENTIONS, thread=self.thread
            ),
            "webhook edit",
            self.retry,
        )

    async def delete(self, message_id: str) -> None:
        if message_id in self._via_fallback and self.fallback is not None:
            await self.fallback.delete(message_id)
            return
        await deliver(
            lambda: self.webhook.delete_message(int(message_id), thread=self.thread),
            "webhook delete",
            self.retry,
        )


class InteractionSink:
    """An `/ask` answer: the deferred response is the first message, follow-ups the rest."""

    def __init__(
        self,
        interaction: discord.Interaction,
        retry: RetryPolicy,
        *,
        prefix: str = "",
        ephemeral: bool = False,
    ) -> None:
        self.interaction = interaction
        self.retry = retry
        self.prefix = prefix
        self.ephemeral = ephemeral  # follow-ups only the asker sees, like the deferred response
        self._original: str | None = None

    async def send(self, text: str) -> str:
        if self._original is None:
            message = await deliver(
                lambda: self.interaction.edit_original_response(
                    content=self.prefix + text, allowed_mentions=NO_MENTIONS
                ),
                "interaction response",
                self.retry,
            )
            self._original = str(message.id)
            return self._original
        followup = await deliver(
            lambda: self.interaction.followup.send(
                text, wait=True, allowed_mentions=NO_MENTIONS, ephemeral=self.ephemeral
            ),
            "interaction follow-up",
            self.retry,
        )
        return str(followup.id)

    async def edit(self, message_id: str, text: str) -> None:
        if message_id == self._original:
            await deliver(
                lambda: self.interaction.edit_original_response(
                    content=self.prefix + text, allowed_mentions=NO_MENTIONS
                ),
                "interaction edit",
                self.retry,
            )
            return
        await deliver(
            lambda: self.interaction.followup.edit_message(
                int(message_id), content=text, allowed_mentions=NO_MENTIONS
            ),
            "follow-up edit",
            self.retry,
        )

    async def delete(self, message_id: str) -> None:
        if message_id == self._original:
            await deliver(
                self.interaction.delete_original_response, "interaction delete", self.retry
            )
            return
        await deliver(
            lambda: self.interaction.followup.delete_message(int(message_id)),
            "follow-up delete",
            self.retry,
        )


WebhookChannel = discord.TextChannel | discord.ForumChannel


class PersonaWebhooks:
    """One webhook per (channel, persona), created by the bot and carrying the persona's avatar.

    Found again after a restart by name and owner. Channels where the bot may not manage
    webhooks are remembered for a while, and replies there use plain messages.
    """

    def __init__(self) -> None:
        self._hooks: dict[tuple[int, str], discord.Webhook] = {}
        self._avatars: dict[tuple[int, str], str] = {}
        self._unavailable: dict[int, float] = {}
        self._lock = asyncio.Lock()

    def owns(self, webhook_id: int | None) -> bool:
        """Whether a message with this webhook id was written by one of our persona webhooks."""
        return webhook_id is not None and any(h.id == webhook_id for h in self._hooks.values())

    def forget(self, channel_id: int, persona_id: str) -> None:
        self._hooks.pop((channel_id, persona_id), None)

    async def get(
        self, channel: WebhookChannel, persona: Persona, me: discord.Member
    ) -> discord.Webhook | None:
        """The persona's webhook in `channel` (made if needed); None where webhooks are refused."""
        if time.monotonic() < self._unavailable.get(channel.id, 0.0):
            return None
        if not channel.permissions_for(me).manage_webhooks:
            self._mark_unavailable(channel.id, "the bot lacks Manage Webhooks")
            return None
        key = (channel.id, persona.id)
        avatar = await asyncio.to_thread(_read_avatar, persona.avatar)
        avatar_hash = hashlib.sha256(avatar).hexdigest() if avatar else ""
        async with self._lock:
            try:
                hook = self._hooks.get(key)
                if hook is None:
                    hook = await self._find_or_create(channel, persona, me, avatar)
                    self._hooks[key] = hook
                    self._avatars[key] = avatar_hash if avatar else ""
                if avatar and self._avatars.get(key) != avatar_hash:
                    await hook.edit(avatar=avatar, reason=f"avatar of persona {persona.id}")
                    self._avatars[key] = avatar_hash
            except discord.HTTPException as exc:
                self._mark_unavailable(channel.id, f"{exc.status} {exc.text or ''}".strip())
                return None
        return hook

    async def _find_or_create(
        self, channel: WebhookChannel, persona: Persona, me: discord.Member, avatar: bytes | None
    ) -> discord.Webhook:
        for hook in await channel.webhooks():
            if hook.user is not None and hook.user.id == me.id and hook.name == persona.id:
                if avatar:
                    await hook.edit(avatar=avatar, reason=f"avatar of persona {persona.id}")
                return hook
        return await channel.create_webhook(
            name=persona.id, avatar=avatar, reason=f"shows persona {persona.id}"
        )

    def _mark_unavailable(self, channel_id: int, why: str) -> None:
        log.info("no persona webhooks in channel %s (%s); using plain messages", channel_id, why)
        self._unavailable[channel_id] = time.monotonic() + WEBHOOK_RETRY_AFTER_S


def _read_avatar(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        if path.stat().st_size > AVATAR_MAX_BYTES:
            log.warning("avatar %s is over %d bytes; not used", path, AVATAR_MAX_BYTES)
            return None
        return path.read_bytes()
    except OSError as exc:
        log.warning("cannot read avatar %s: %s", path, exc)
        return None
