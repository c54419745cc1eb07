"""The Discord adapter: the real discord.py client, answering as the personas.

A message is answered when it is a DM, @mentions the bot, replies to one of its messages, is in a
channel bound to a persona, or is in a thread the bot opened. The path, top to bottom
(`DiscordAdapter.on_message`): ignore bots, webhooks and itself -> addressed? -> place allowed ->
first sighting (gateway replays are answered once, across restarts too) -> text (mention removed,
small text attachments read) -> conversation (thread, DM or reply chain) -> persona (channel
binding, name at the start, the conversation's persona, the default) -> typing while the prompt
is processed -> streamed into paced edits of the persona's webhook messages (plain messages
where webhooks are not allowed) -> sources footer -> message ids stored for replies and reactions.

Optionally a persona has a bot of its own (`discord.persona_tokens = ["tutor=TOKEN"]`): that bot
answers its DMs, its mentions and replies to it, and shows every reply of that persona.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import discord
import yarl

from bots.adapters.discord.commands import SlashCommands, build_tree, member_roles
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
from bots.adapters.discord.sinks import (
    BUSY,
    CUT_SHORT,
    FAILED,
    INTERRUPTED,
    MESSAGE_LIMIT,
    NO_MENTIONS,
    NO_PERSONAS,
    ChannelSink,
    PersonaWebhooks,
    ReplyTarget,
    RetryPolicy,
    WebhookSink,
    defuse_mentions,
    sources_footer,
)
from bots.adapters.render import MessageSink, StreamRenderer
from bots.app import App
from bots.chat.policy import NoticeThrottle
from bots.chat.router import route
from bots.chat.service import ChatRefused, Incoming
from bots.engine.base import EngineBusy, EngineError
from bots.persona.model import Persona

log = logging.getLogger(__name__)

DISCORD_API_URL = "https://discord.com/api/v10"
DISCORD_GATEWAY_URL = "wss://gateway.discord.gg/"
READY_TIMEOUT_S = 60.0
GUILD_READY_TIMEOUT_S = 2.0
SEEN_TTL_S = 7 * 24 * 3600.0  # gateway replays come within minutes; restarts within days
TYPING_REFRESH_S = 8.0  # Discord shows "typing" for about 10 s per request
STOP_GRACE_S = 10.0
FINALISE_TIMEOUT_S = 5.0
MESSAGE_CACHE = 1000
THUMBS_UP = "👍"
THUMBS_DOWN = "👎"

Addressed = Literal["dm", "mention", "reply", "channel", "thread"]


class DiscordSetupError(RuntimeError):
    """The adapter cannot start: the message says which setting to fix."""


@dataclass(frozen=True)
class BotLogin:
    """One bot account to log in: the main bot (no persona) or a persona's own bot."""

    persona_id: str | None
    token: str = field(repr=False)
    setting: str


def bot_logins(token: str, persona_tokens: tuple[str, ...]) -> list[BotLogin]:
    """The main bot, then one per `discord.persona_tokens` entry (`PERSONA=TOKEN`)."""
    if not token:
        raise DiscordSetupError("DISCORD_TOKEN is not set (env, .env or [discord] token)")
    logins = [BotLogin(None, token, "DISCORD_TOKEN")]
    for number, entry in enumerate(persona_tokens, 1):
        persona_id, sep, persona_token = (part.strip() for part in entry.partition("="))
        if not sep or not persona_id or not persona_token:
            raise DiscordSetupError(
                f"discord.persona_tokens entry {number}: write it as PERSONA=TOKEN"
            )
        logins.append(BotLogin(persona_id, persona_token, f"discord.persona_tokens ({persona_id})"))
    return logins


def intents() -> discord.Intents:
    """Only what the adapter uses; message content is privileged (enable it in the portal)."""
    wanted = discord.Intents.none()
    wanted.guilds = True
    wanted.guild_messages = True
    wanted.dm_messages = True
    wanted.message_content = True
    wanted.guild_reactions = True
    wanted.dm_reactions = True
    return wanted


def point_client_at(api_url: str, gateway_url: str) -> None:
    """Send discord.py's REST calls and gateway connection to these URLs (default: Discord's)."""
    api = (api_url or DISCORD_API_URL).rstrip("/")
    gateway = gateway_url or DISCORD_GATEWAY_URL
    if not api.startswith(("http://", "https://")):
        raise DiscordSetupError(
            f"DISCORD_API_URL (discord.api_url) must be an http(s) URL, not {api!r}"
        )
    if not gateway.startswith(("ws://", "wss://")):
        raise DiscordSetupError(
            f"DISCORD_GATEWAY_URL (discord.gateway_url) must be a ws(s) URL, not {gateway!r}"
        )
    # Class attributes: discord.py has no per-client setting for these.
    discord.http.Route.BASE = api
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)


def guard_parsers(parsers: dict[str, Callable[[Any], None]]) -> None:
    """Drop malformed gateway events instead of letting one kill the connection.

    discord.py runs the parsers inside its receive loop, where an exception (a missing key, a
    wrong type) would end `Client.connect`; a bad event is logged and skipped.
    """
    for event, parser in list(parsers.items()):
        parsers[event] = _guarded(event, parser)


def _guarded(event: str, parser: Callable[[Any], None]) -> Callable[[Any], None]:
    def parse(data: Any) -> None:
        try:
            parser(data)
        except Exception as exc:
            log.warning("ignored a malformed %s event (%s: %s)", event, type(exc).__name__, exc)

    return parse


class PersonaClient(discord.Client):
    """One logged-in bot; every event goes to the adapter. The main bot carries the commands."""

    def __init__(
        self, adapter: DiscordAdapter, login: BotLogin, *, guild_ready_timeout: float
    ) -> None:
        super().__init__(
            intents=intents(),
            allowed_mentions=NO_MENTIONS,
            guild_ready_timeout=guild_ready_timeout,
            max_messages=MESSAGE_CACHE,
            chunk_guilds_at_startup=False,
        )
        self.adapter = adapter
        self.login_as = login
        self.ready = asyncio.Event()
        self.tree = build_tree(self, adapter.commands) if login.persona_id is None else None
        guard_parsers(self._connection.parsers)

    @property
    def persona_id(self) -> str | None:
        return self.login_as.persona_id

    async def setup_hook(self) -> None:
        if self.tree is None:
            return
        try:
            await self.tree.sync()
        except (discord.HTTPException, aiohttp.ClientError) as exc:
            log.warning("could not sync slash commands (%s); the previous set stays", exc)

    async def on_ready(self) -> None:
        self.ready.set()
        self.adapter.connection_changed(self, "connected")

    async def on_resumed(self) -> None:
        self.adapter.connection_changed(self, "connected")

    async def on_disconnect(self) -> None:
        if not self.is_closed():
            self.adapter.connection_changed(self, "reconnecting")

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.on_message(self, message)

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        self.adapter.on_edit(payload.message_id, payload.data.get("content"))

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        self.adapter.on_delete(payload.message_id)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self.adapter.on_reaction(payload, added=True)

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self.adapter.on_reaction(payload, added=False)


class DiscordAdapter:
    """Serves the personas on Discord; `bots serve` starts it when `DISCORD_TOKEN` is set."""

    name = "discord"

    def __init__(
        self,
        app: App,
        *,
        guild_ready_timeout_s: float = GUILD_READY_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        stop_grace_s: float | None = None,
    ) -> None:
        self.app = app
        self.settings = app.settings.discord
        self.guild_ready_timeout_s = guild_ready_timeout_s
        self.retry = retry or RetryPolicy()
        # `bots serve` waits shutdown_grace_s for stop(): finish within it, finalising included.
        fits = app.settings.server.shutdown_grace_s - FINALISE_TIMEOUT_S - 1.0
        self.stop_grace_s = (
            stop_grace_s if stop_grace_s is not None else max(0.0, min(STOP_GRACE_S, fits))
        )
        self.clients: list[PersonaClient] = []
        self.commands = SlashCommands(self)
        self.webhooks = PersonaWebhooks()
        self.conversations = Conversations(app.store, self._is_ours)
        self._gateways: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: dict[int, tuple[asyncio.Task[None], str]] = {}
        self._rate_notices = NoticeThrottle()
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Log in, sync the slash commands, connect to the gateway; return once ready."""
        logins = bot_logins(self.settings.token, self.settings.persona_tokens)
        point_client_at(self.settings.api_url, self.settings.gateway_url)
        self.app.adapters[self.name] = "connecting"
        try:
            for login in logins:
                client = PersonaClient(self, login, guild_ready_timeout=self.guild_ready_timeout_s)
                self.clients.append(client)
                await self._login(client)
                self._gateways.append(asyncio.create_task(client.connect(reconnect=True)))
            for client, gateway in zip(self.clients, self._gateways, strict=True):
                await self._until_ready(client, gateway)
        except BaseException:
            for client in self.clients:
                await client.close()
            raise
        for client in self.clients:
            log.info("Discord: %s connected as %s", client.login_as.setting, client.user)

    async def _login(self, client: PersonaClient) -> None:
        setting = client.login_as.setting
        try:
            await client.login(client.login_as.token)
        except discord.LoginFailure:
            raise DiscordSetupError(
                f"Discord refused {setting} (401): copy the bot token again from the "
                "Developer Portal (Bot -> Reset Token)"
            ) from None
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            raise DiscordSetupError(
                f"cannot reach Discord at {discord.http.Route.BASE} ({setting}): {exc}"
            ) from None

    async def _until_ready(self, client: PersonaClient, gateway: asyncio.Task[None]) -> None:
        ready = asyncio.create_task(client.ready.wait())
        done, _ = await asyncio.wait(
            {ready, gateway}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if ready in done:
            return
        ready.cancel()
        failure = gateway.exception() if gateway in done else None
        if isinstance(failure, discord.PrivilegedIntentsRequired):
            raise DiscordSetupError(
                f"Discord refused the Message Content intent for {client.login_as.setting}: "
                "enable it in the Developer Portal (Bot -> Privileged Gateway Intents)"
            )
        raise DiscordSetupError(f"the Discord gateway did not become ready: {failure or 'timeout'}")

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
        self.app.adapters[self.name] = "stopped"

    def connection_changed(self, client: PersonaClient, state: str) -> None:
        """`/status` shows the main bot's connection; every change is logged."""
        log.info("Discord: %s %s", client.login_as.setting, state)
        if client.persona_id is None:
            self.app.adapters[self.name] = state

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
            own = self.app.registry.get(client.persona_id)
            persona_id = own.id if own else None
            text = route([own], text).text if own else text
        else:
            persona_id, text = self.choose(text, message.channel, conversation)
        notify_in = ChannelSink(message.channel, self.retry, reference=message)
        if persona_id is None or self.app.registry.get(persona_id) is None:
            if explicit:
                await notify_in.send(NO_PERSONAS)
            return
        persona = self.app.service.persona(persona_id)
        if not text:
            if explicit:
                await notify_in.send(
                    persona.greeting or f"Hi! I'm {persona.display_name}. Ask me anything."
                )
            return
        shown_by = self._client_of_persona(persona_id, message.guild) or client
        channel = _channel_as(shown_by, message.channel, message.guild)

        async def sink(snapshot: Persona) -> tuple[MessageSink, int]:
            return await self.sink_for(channel, message.guild, snapshot, reference=message)

        async def notify(text: str) -> None:
            await ChannelSink(channel, self.retry, reference=message).send(text)

        incoming = Incoming(
            PLATFORM,
            conversation.place,
            str(message.author.id),
            text,
            persona_id,
            roles=member_roles(message.author),
            message_id=str(message.id),
            history=conversation.history,
        )
        target = ReplyTarget(sink, notify, channel, explicit)
        await self.reply(incoming, target, check_policy=True, waiting_on=message.id)

    def choose(self, text: str, channel: Any, conversation: Conversation) -> tuple[str | None, str]:
        """Channel binding, else a persona named first, else the conversation's, else default."""
        personas = self.app.registry.personas()
        chosen = route(
            personas,
            text,
            platform="discord",
            channel_id=self._binding(channel) or "",
            default=self.app.settings.default_persona,
        )
        continuing = conversation.persona_id
        if chosen.reason == "default" and continuing and self.app.registry.get(continuing):
            return continuing, chosen.text
        return chosen.persona_id, chosen.text

    def _binding(self, channel: Any) -> str | None:
        """The id of the channel (or a thread's parent) bound to a persona, if any."""
        ids = [str(channel.id)]
        if isinstance(channel, discord.Thread):
            ids.append(str(channel.parent_id))
        for persona in self.app.registry.personas():
            for channel_id in ids:
                if channel_id in persona.discord_channels:
                    return channel_id
        return None

    def place_allowed(self, channel: Any, guild: discord.Guild | None) -> bool:
        """The global allow/deny lists of guilds and channels (a thread counts as its parent)."""
        policy = self.app.service.policy
        guild_id = str(guild.id) if guild else ""
        ids = [str(channel.id)]
        if isinstance(channel, discord.Thread):
            ids.append(str(channel.parent_id))
        return all(policy.place_allowed(guild_id=guild_id, channel_id=i) for i in ids)

    async def first_sighting(self, key: str) -> bool:
        """True once per event id, persisted: a RESUME replay or a restart does not repeat it."""
        store = self.app.store
        return await store.run(store.first_sighting, f"discord:{key}", SEEN_TTL_S)

    def _client_of_persona(
        self, persona_id: str, guild: discord.Guild | None
    ) -> PersonaClient | None:
        """The persona's own bot, if it has one that is in this guild."""
        for client in self.clients:
            if client.persona_id == persona_id and (guild is None or client.get_guild(guild.id)):
                return client
        return None

    async def sink_for(
        self,
        channel: Any,
        guild: discord.Guild | None,
        persona: Persona,
        *,
        reference: discord.Message | None,
    ) -> tuple[MessageSink, int]:
        """How the persona shows: its own bot, else its webhook where allowed, else plain
        messages of the main bot prefixed with its name."""
        own_bot = self._client_of_persona(persona.id, guild)
        if own_bot is not None:
            mine = _channel_as(own_bot, channel, guild)
            return ChannelSink(mine, self.retry, reference=reference), MESSAGE_LIMIT
        prefix = f"**{persona.display_name}:** " if len(self.app.registry.personas()) > 1 else ""
        limit = MESSAGE_LIMIT - len(prefix)
        plain = ChannelSink(channel, self.retry, reference=reference, prefix=prefix)
        parent = channel.parent if isinstance(channel, discord.Thread) else channel
        me = guild.me if guild else None
        if me is None or not isinstance(parent, discord.TextChannel | discord.ForumChannel):
            return plain, limit
        hook = await self.webhooks.get(parent, persona, me)
        if hook is None:
            return plain, limit
        sink = WebhookSink(
            hook,
            persona.display_name,
            self.retry,
            thread=channel if isinstance(channel, discord.Thread) else None,
            fallback=plain,
            on_broken=lambda: self.webhooks.forget(parent.id, persona.id),
        )
        return sink, limit

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

    # ------------------------------------------------------------------ replying

    async def reply(
        self,
        incoming: Incoming,
        target: ReplyTarget,
        *,
        check_policy: bool,
        waiting_on: int | None = None,
    ) -> None:
        """Stream one reply: typing, then paced edits, then the sources footer."""
        typing = (
            asyncio.create_task(self._keep_typing(target.typing_in)) if target.typing_in else None
        )
        renderer: StreamRenderer | None = None
        try:
            try:
                reply = await self.app.service.start(incoming, check_policy=check_policy)
            except ChatRefused as refused:
                await self._refused(refused, incoming.user_id, target)
                return
            except EngineBusy:
                await target.notify(BUSY)
                return
            except EngineError:
                log.exception("the engine failed to start a reply")
                await target.notify(FAILED)
                return
            sink, limit = await target.sink(reply.persona)
            renderer = StreamRenderer(
                sink, limit, self.settings.edit_interval_s, transform=defuse_mentions
            )
            footer = ""
            visible = False
            try:
                async for piece in reply:
                    await renderer.feed(piece)
                    if renderer.message_ids and not visible:
                        # Shown now: stop typing; an edit or deletion no longer cancels it.
                        visible = True
                        if typing is not None:
                            typing.cancel()
                        if waiting_on is not None:
                            self._waiting.pop(waiting_on, None)
            except EngineError:
                log.exception("the engine failed mid-reply")
                footer = CUT_SHORT
            if reply.persona.citations and not footer:
                footer = sources_footer(reply.sources)
            message_ids = await renderer.finish(footer)
            self.conversations.remember_parts(message_ids)
            if reply.turn_id is not None and message_ids:
                store = self.app.store
                await store.run(store.set_message_id, reply.turn_id, message_ids[0])
        except asyncio.CancelledError:
            if self._stopping and renderer is not None and renderer.message_ids:
                await renderer.finish(INTERRUPTED)
            raise
        finally:
            if typing is not None:
                typing.cancel()

    async def _refused(self, refused: ChatRefused, user_id: str, target: ReplyTarget) -> None:
        if refused.retry_after_s:
            if not self._rate_notices.should_notify(user_id, refused.retry_after_s):
                return
        elif not target.explicit:
            return  # access refusals in a bound channel stay silent
        await target.notify(refused.user_message)

    async def _keep_typing(self, channel: discord.abc.Messageable) -> None:
        while True:
            try:
                await channel.typing()
            except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
                log.debug("typing indicator failed: %s", exc)
            await asyncio.sleep(TYPING_REFRESH_S)

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
        store = self.app.store
        key = str(self.conversations.part_of.get(payload.message_id, payload.message_id))
        turn = await store.run(store.turn_by_message, PLATFORM, key)
        if turn is None or turn.role != "assistant":
            return
        if added:
            await store.run(store.add_feedback, turn.id, str(payload.user_id), value)
        else:
            await store.run(store.remove_feedback, turn.id, str(payload.user_id), value)


def _channel_as(client: PersonaClient, channel: Any, guild: discord.Guild | None) -> Any:
    """`channel` as `client` sees it, so that a persona's own bot posts through its own
    connection (DMs are only ever seen by the bot they were sent to)."""
    if guild is None or client.user is None:
        return channel
    own = client.get_channel(channel.id)
    if own is not None:
        return own
    return client.get_partial_messageable(channel.id, guild_id=guild.id)
