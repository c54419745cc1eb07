"""What a Discord message says, and which conversation it continues.

Conversations follow Discord's structure: a thread is one conversation, a DM channel is one, and
elsewhere a reply chain is one (a new top-level message starts a new one). The store knows the
conversation of every message the bot answered or wrote; when it has no record (a chain that
started before the bot, or a wiped database) the chain itself, fetched from Discord, becomes the
history.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

import aiohttp
import discord

from bots.chat.service import ChatService
from bots.engine.base import ChatMessage

log = logging.getLogger(__name__)

PLATFORM = "discord"
MAX_INPUT_CHARS = 4000  # Discord's own limit for a message (with Nitro); more is malformed
MAX_ATTACHMENTS = 3
MAX_ATTACHMENT_BYTES = 16_000
TEXT_TYPES = (
    "text/",
    "application/json",
    "application/xml",
    "application/yaml",
    "application/x-yaml",
    "application/toml",
)
REPLY_CHAIN_LIMIT = 12
# Control characters other than tab, newline and carriage return: never meaningful in a question.
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
USER_MENTION = re.compile(r"<@!?(\d+)>")
ROLE_MENTION = re.compile(r"<@&(\d+)>")
CHANNEL_MENTION = re.compile(r"<#(\d+)>")
CURSOR_OR_FOOTER = re.compile(r"( ▌$)|(\n*-# Sources: .*$)")


@dataclass(frozen=True)
class Conversation:
    """The store key of a conversation, the persona that last spoke in it, and chain history."""

    place: str
    persona_id: str | None = None
    history: tuple[ChatMessage, ...] = ()


def well_formed(message: discord.Message) -> bool:
    """Whether discord.py built a message we can read (malformed payloads are dropped)."""
    author = getattr(message, "author", None)
    return (
        isinstance(getattr(message, "content", None), str)
        and author is not None
        and isinstance(getattr(author, "id", None), int)
        and getattr(message, "channel", None) is not None
    )


def readable_text(message: discord.Message, ours: Collection[int]) -> str:
    """The text with mentions of our bots removed and other mentions made readable."""
    users = {u.id: u.display_name for u in message.mentions}
    roles = {r.id: r for r in message.role_mentions}
    guild = message.guild

    def user(match: re.Match[str]) -> str:
        user_id = int(match.group(1))
        return "" if user_id in ours else "@" + users.get(user_id, "someone")

    def role(match: re.Match[str]) -> str:
        found = roles.get(int(match.group(1)))
        if found is not None and found.tags is not None and found.tags.bot_id in ours:
            return ""  # a bot's own integration role, mentioned instead of the bot
        return "@" + (found.name if found is not None else "role")

    def channel(match: re.Match[str]) -> str:
        found = guild.get_channel_or_thread(int(match.group(1))) if guild else None
        return "#" + (found.name if found is not None else "channel")

    text = USER_MENTION.sub(user, message.content)
    text = ROLE_MENTION.sub(role, text)
    text = CHANNEL_MENTION.sub(channel, text)
    return CONTROL_CHARS.sub("", text).strip()


def mentions_me(message: discord.Message, me_id: int) -> bool:
    """The bot is @mentioned, directly or through its integration role."""
    if any(u.id == me_id for u in message.mentions):
        return True
    return any(r.tags is not None and r.tags.bot_id == me_id for r in message.role_mentions)


async def attachments_text(message: discord.Message) -> str:
    """Small text attachments, appended as fenced blocks; anything else is ignored."""
    parts: list[str] = []
    for attachment in message.attachments[:MAX_ATTACHMENTS]:
        kind = (attachment.content_type or "").split(";")[0].strip()
        if attachment.size > MAX_ATTACHMENT_BYTES or not kind.startswith(TEXT_TYPES):
            continue
        try:
            data = await attachment.read()
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            log.info("attachment %s unreadable: %s", attachment.filename, type(exc).__name__)
            continue
        text = CONTROL_CHARS.sub("", data[:MAX_ATTACHMENT_BYTES].decode("utf-8", "replace"))
        # A fence inside the file must not close ours early.
        text = text.replace("```", "`\u200b``")
        parts.append(f"[{attachment.filename}]\n```\n{text}\n```")
    return "\n\n".join(parts)


def strip_decorations(text: str) -> str:
    """A bot message as conversation history: no streaming cursor, no sources footer."""
    return CURSOR_OR_FOOTER.sub("", text).strip()


class Conversations:
    """Finds the conversation a message continues, from the store first, then from Discord."""

    def __init__(self, service: ChatService, is_ours: Callable[[discord.Message], bool]) -> None:
        self.service = service
        self.is_ours = is_ours
        # Later parts of a split reply -> its first part (the one the store knows).
        self.part_of: dict[int, int] = {}

    def remember_parts(self, message_ids: list[str]) -> None:
        """Record the parts of a split reply so replies and reactions to any part are understood."""
        for part in message_ids[1:]:
            self.part_of[int(part)] = int(message_ids[0])
        while len(self.part_of) > 10_000:
            self.part_of.pop(next(iter(self.part_of)))

    async def turn_persona(self, message_id: int) -> tuple[str, str] | None:
        """(place, persona id) of the stored turn shown by this message, if the store knows it."""
        key = str(self.part_of.get(message_id, message_id))
        return await self.service.place_of_reply(PLATFORM, key)

    async def is_reply_to_us(self, message: discord.Message) -> bool:
        reference = message.reference
        if reference is None or reference.message_id is None:
            return False
        resolved = reference.resolved
        if isinstance(resolved, discord.Message) and self.is_ours(resolved):
            return True
        key = str(self.part_of.get(reference.message_id, reference.message_id))
        return await self.service.answered(PLATFORM, key) is not None

    async def of(self, message: discord.Message) -> Conversation:
        """The conversation `message` belongs to."""
        channel = message.channel
        if isinstance(channel, discord.Thread):
            place = f"thread:{channel.id}"
            return Conversation(place, await self.service.last_persona(PLATFORM, place))
        if message.guild is None:
            place = f"dm:{channel.id}"
            return Conversation(place, await self.service.last_persona(PLATFORM, place))
        if message.reference is None or message.reference.message_id is None:
            return Conversation(f"msg:{message.id}")
        return await self._from_chain(message)

    async def _from_chain(self, message: discord.Message) -> Conversation:
        chain: list[discord.Message] = []
        current = message
        for _ in range(REPLY_CHAIN_LIMIT):
            reference = current.reference
            if reference is None or reference.message_id is None:
                break
            known = await self.turn_persona(reference.message_id)
            if known is not None:
                return Conversation(known[0], known[1])
            parent = await self._fetch(current, reference)
            if parent is None:
                break
            chain.append(parent)
            current = parent
        history = tuple(
            ChatMessage(
                "assistant" if self.is_ours(m) else "user",
                strip_decorations(m.content) if self.is_ours(m) else m.content,
            )
            for m in reversed(chain)
            if m.content.strip()
        )
        return Conversation(f"msg:{message.id}", None, history)

    async def _fetch(
        self, child: discord.Message, reference: discord.MessageReference
    ) -> discord.Message | None:
        if isinstance(reference.resolved, discord.Message):
            return reference.resolved
        if reference.message_id is None or reference.channel_id != child.channel.id:
            return None
        try:
            return await child.channel.fetch_message(reference.message_id)
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            log.info("reply chain stops at %s: %s", reference.message_id, type(exc).__name__)
            return None
