"""The Discord adapter: the real discord.py client, answering as the personas.

A message is answered when it is a DM, @mentions the bot, replies to one of its messages, is in a
channel bound to a persona, or is in a thread the bot opened. The path, top to bottom
(`DiscordAdapter.on_message`): ignore bots, webhooks and itself -> addressed? -> place allowed ->
first sighting (gateway replays are answered once, across restarts too) -> text (mention removed,
small text attachments read) -> conversation (thread, DM or reply chain) -> persona (channel
binding, name at the start, the conversation's persona, the default) -> the shared reply
lifecycle (`bots.adapters.delivery`): typing while the prompt is processed, streamed into paced
edits of the persona's webhook messages (plain messages where webhooks are not allowed), the
sources footer, the message ids stored for replies and reactions.

Optionally a persona has a bot of its own (`discord.persona_tokens = ["tutor=TOKEN"]`): that bot
answers its DMs, its mentions and replies to it, and shows every reply of that persona.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal

import discord

from bots.adapters.delivery import Delivery
from bots.adapters.discord.client import (
    PersonaClient,
    bot_logins,
    point_client_at,
)
from bots.adapters.discord.commands import SlashCommands, build_tree, member_roles, reader_of
from bots.adapters.discord.context import (
    CONTROL_CHARS,
    MAX_INPUT_CHARS,
    PLATFORM,
    Conversation,
    Conversations,
    attachments_text,
    mentions_me,
    readable_text,
    well_formed,
)
from bots.adapters.discord.showing import PersonaDisplay, channel_as
from bots.adapters.discord.sinks import ChannelSink, DiscordSink, PersonaWebhooks, RetryPolicy
from bots.adapters.discord.view import DiscordSurface, SinkMaker
from bots.chat import notices
from bots.chat.model import Incoming
from bots.chat.router import route
from bots.chat.service import ChatService
from bots.persona.model import Persona

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
GUILD_READY_TIMEOUT_S = 2.0
SEEN_TTL_S = 7 * 24 * 3600.0  # gateway replays come within minutes; restarts within days
STOP_GRACE_S = 10.0
FINALISE_TIMEOUT_S = 5.0
THUMBS_UP = "👍"
THUMBS_DOWN = "👎"

Addressed = Literal["dm", "mention", "reply", "channel", "thread"]


class DiscordAdapter:
    """Serves the personas on Discord; `bots serve` starts it when `DISCORD_TOKEN` is set."""

    name = "discord"

    def __init__(
        self,
        service: ChatService,
        connections: dict[str, str],
        *,
        guild_ready_timeout_s: float = GUILD_READY_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        stop_grace_s: float | None = None,
        shard: tuple[int, int] | None = None,
    ) -> None:
        self.connections = connections
        self.shard = shard
        self.settings = service.settings.discord
        self.guild_ready_timeout_s = guild_ready_timeout_s
        self.retry = retry or RetryPolicy()
        # `bots serve` waits shutdown_grace_s for stop(): finish within it, finalising included.
        fits = service.settings.server.shutdown_grace_s - FINALISE_TIMEOUT_S - 1.0
        self.stop_grace_s = (
            stop_grace_s if stop_grace_s is not None else max(0.0, min(STOP_GRACE_S, fits))
        )
        self.service = service
        self.registry = service.registry
        self.delivery = Delivery(service, place_interval_s=lambda: self.settings.edit_interval_s)
        self.clients: list[PersonaClient] = []
        self.commands = SlashCommands(self)
        self.webhooks = PersonaWebhooks()
        self.display = PersonaDisplay(self.clients, self.webhooks, service.registry, self.retry)
        self.conversations = Conversations(service, self._is_ours)
        self._gateways: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: dict[int, tuple[asyncio.Task[None], str]] = {}
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Log in, sync the slash commands, connect to the gateway; return once ready."""
        logins = bot_logins(self.settings.token, self.settings.persona_tokens)
        point_client_at(self.settings.api_url, self.settings.gateway_url)
        self.connections[self.name] = "connecting"
        try:
            for login in logins:
                client = PersonaClient(
                    self,
                    login,
                    guild_ready_timeout=self.guild_ready_timeout_s,
                    commands=lambda bot: build_tree(bot, self.commands),
                    shard=self.shard,
                    rest_limits=self.service.rest_limits,
                )
                self.clients.append(client)
                await client.log_in()
                self._gateways.append(asyncio.create_task(client.connect(reconnect=True)))
            for client, gateway in zip(self.clients, self._gateways, strict=True):
                await client.until_ready(gateway, READY_TIMEOUT_S)
        except BaseException:
            for client in self.clients:
                await client.close()
            raise
        for client in self.clients:
            log.info("Discord: %s connected as %s", client.login_as.setting, client.user)

    async def stop(self) -> None:
        """Stop taking messages; give in-flight replies a bounded time, then close them off."""
        self._stopping = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.stop_grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=FINALISE_TIMEOUT_S)
        for client in self.clients:
            await client.close()
        for gateway in self._gateways:
            try:
                await gateway
            except Exception:
                log.debug("a gateway connection ended with an error", exc_info=True)
        self.connections[self.name] = "stopped"

    def connection_changed(self, client: PersonaClient, state: str) -> None:
        """`/status` shows the main bot's connection; every change is logged."""
        log.info("Discord: %s %s", client.login_as.setting, state)
        if client.persona_id is None:
            self.connections[self.name] = state

    @property
    def default_persona(self) -> str:
        return self.service.settings.default_persona

    def accepting(self) -> bool:
        return not self._stopping

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a reply as a task that `stop()` waits for (and then closes off)."""
        task = asyncio.create_task(self._logged(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    async def _logged(work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Discord: a reply failed")

    # ------------------------------------------------------------------ messages

    async def on_message(self, client: PersonaClient, message: discord.Message) -> None:
        """Answer the message if it is for this bot (see the module docstring for the path)."""
        me = client.user
        if self._stopping or me is None or not well_formed(message):
            return
        if message.author.bot or message.webhook_id is not None or self._is_ours(message):
            return
        if len(message.content) > MAX_INPUT_CHARS or CONTROL_CHARS.search(message.content):
            log.info(
                "ignored malformed message %s (%d characters)", message.id, len(message.content)
            )
            return
        how = await self._addressed(message)
        if how is None or (how != "dm" and self._answered_by(message) is not client):
            return
        if not self.place_allowed(message.channel, message.guild):
            return
        if not await self.first_sighting(f"message:{message.id}"):
            log.info("message %s was already answered (gateway replay)", message.id)
            return
        task = self.spawn(self._answer(client, message, how))
        self._waiting[message.id] = (task, message.content)
        task.add_done_callback(lambda _: self._waiting.pop(message.id, None))

    async def _addressed(self, message: discord.Message) -> Addressed | None:
        if message.guild is None:
            return "dm"
        if any(c.user and mentions_me(message, c.user.id) for c in self.clients):
            return "mention"
        if await self.conversations.is_reply_to_us(message):
            return "reply"
        if self._binding(message.channel) is not None:
            return "channel"
        channel = message.channel
        if isinstance(channel, discord.Thread) and any(
            c.user and channel.owner_id == c.user.id for c in self.clients
        ):
            return "thread"
        return None

    def _answered_by(self, message: discord.Message) -> PersonaClient | None:
        """Which of our bots answers in a guild: a persona's own bot when it is talked to
        directly (its mention, a reply to it), else the main bot. Every bot that receives the
        event computes the same answer, so exactly one goes on. (A DM has one receiver.)"""
        replied = message.reference.resolved if message.reference else None
        for bot in self.clients[1:]:
            if bot.user is None:
                continue
            if mentions_me(message, bot.user.id) or (
                isinstance(replied, discord.Message) and replied.author.id == bot.user.id
            ):
                return bot
        return self.clients[0] if self.clients else None

    async def _answer(
        self, client: PersonaClient, message: discord.Message, how: Addressed
    ) -> None:
        explicit = how != "channel"
        ours = {c.user.id for c in self.clients if c.user is not None}
        attached = await attachments_text(message)
        text = "\n\n".join(t for t in (readable_text(message, ours), attached) if t)
        conversation = await self.conversations.of(message)
        persona_id: str | None
        if client.persona_id is not None:  # a persona's own bot speaks only as that persona
            own = self.registry.get(client.persona_id)
            persona_id = own.id if own else None
            text = route([own], text).text if own else text
        else:
            persona_id, text = self.choose(text, message.channel, conversation)
        persona = self.registry.get(persona_id) if persona_id else None
        notify_in = ChannelSink(message.channel, self.retry, reference=message)
        if persona is None or not text:
            if explicit:
                await notify_in.send(notices.greeting(persona) if persona else notices.NO_PERSONAS)
            return
        shown_by = self.display.client_of_persona(persona.id, message.guild) or client
        channel = channel_as(shown_by, message.channel, message.guild)

        async def sink(snapshot: Persona) -> tuple[DiscordSink, int]:
            return await self.display.sink_for(channel, message.guild, snapshot, reference=message)

        async def notify(text: str) -> None:
            await ChannelSink(channel, self.retry, reference=message).send(text)

        incoming = Incoming(
            PLATFORM,
            conversation.place,
            str(message.author.id),
            text,
            persona.id,
            roles=member_roles(message.author),
            message_id=str(message.id),
            history=conversation.history,
            reader=reader_of(message.author, message.guild),
        )
        surface = self.surface(
            sink, notify, channel, explicit, on_visible=lambda: self._waiting.pop(message.id, None)
        )
        await self.delivery.deliver(incoming, surface)

    def surface(
        self,
        sink: SinkMaker,
        notify: Callable[[str], Awaitable[None]],
        typing_in: discord.abc.Messageable | None,
        explicit: bool,
        *,
        on_visible: Callable[[], object] = lambda: None,
    ) -> DiscordSurface:
        """Where one reply goes, for the shared lifecycle."""
        return DiscordSurface(
            explicit,
            sink,
            notify,
            typing_in,
            self.settings.edit_interval_s,
            self.conversations.remember_parts,
            on_visible,
        )

    def choose(self, text: str, channel: Any, conversation: Conversation) -> tuple[str | None, str]:
        """Channel binding, else a persona named first, else the conversation's, else default."""
        personas = self.registry.personas()
        chosen = route(
            personas,
            text,
            platform="discord",
            channel_id=self._binding(channel) or "",
            default=self.default_persona,
        )
        continuing = conversation.persona_id
        if chosen.reason == "default" and continuing and self.registry.get(continuing):
            return continuing, chosen.text
        return chosen.persona_id, chosen.text

    def _binding(self, channel: Any) -> str | None:
        """The id of the channel (or a thread's parent) bound to a persona, if any."""
        ids = [str(channel.id)]
        if isinstance(channel, discord.Thread):
            ids.append(str(channel.parent_id))
        for persona in self.registry.personas():
            for channel_id in ids:
                if channel_id in persona.discord_channels:
                    return channel_id
        return None

    def place_allowed(self, channel: Any, guild: discord.Guild | None) -> bool:
        """The global allow/deny lists of guilds and channels (a thread counts as its parent)."""
        guild_id = str(guild.id) if guild else ""
        ids = [str(channel.id)]
        if isinstance(channel, discord.Thread):
            ids.append(str(channel.parent_id))
        return all(self.service.place_allowed(guild_id=guild_id, channel_id=i) for i in ids)

    async def first_sighting(self, key: str) -> bool:
        """True once per event id, persisted: a RESUME replay or a restart does not repeat it."""
        return await self.service.first_sighting(PLATFORM, key, SEEN_TTL_S)

    def on_edit(self, message_id: int, content: Any) -> None:
        """An author edited a message before its reply started: that reply is cancelled."""
        waiting = self._waiting.get(message_id)
        if waiting is not None and isinstance(content, str) and content != waiting[1]:
            log.info("message %s edited before its reply started; reply cancelled", message_id)
            waiting[0].cancel()

    def on_delete(self, message_id: int) -> None:
        """An author deleted a message before its reply started: that reply is cancelled."""
        waiting = self._waiting.get(message_id)
        if waiting is not None:
            log.info("message %s deleted before its reply started; reply cancelled", message_id)
            waiting[0].cancel()

    def _is_ours(self, message: discord.Message) -> bool:
        """Written by one of our bots or persona webhooks."""
        author = message.author.id
        return any(c.user is not None and c.user.id == author for c in self.clients) or (
            self.webhooks.owns(message.webhook_id)
        )

    # ------------------------------------------------------------------ reactions

    async def on_reaction(self, payload: discord.RawReactionActionEvent, *, added: bool) -> None:
        """A thumbs up/down on one of our replies is stored as feedback (removing it, removed).
        Several of our bots may see the same reaction: storing it is idempotent."""
        name = payload.emoji.name or ""
        value = 1 if name.startswith(THUMBS_UP) else -1 if name.startswith(THUMBS_DOWN) else 0
        ours = {c.user.id for c in self.clients if c.user is not None}
        if value == 0 or payload.user_id in ours:
            return
        key = str(self.conversations.part_of.get(payload.message_id, payload.message_id))
        await self.service.react(PLATFORM, key, str(payload.user_id), value, added=added)
