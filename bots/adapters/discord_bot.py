"""The Discord adapter: the real discord.py client, answering as the personas.

A message is answered when it is a DM, @mentions the bot, replies to one of its messages, is in a
channel bound to a persona, or is in a thread the bot opened. The path, top to bottom
(`DiscordAdapter.on_message`): ignore bots, webhooks and itself -> addressed? -> place allowed ->
first sighting (gateway replays are answered once, across restarts too) -> text (mention removed,
small text attachments read) -> conversation (thread, DM or reply chain) -> persona (channel
binding, name at the start, the conversation's persona, the default) -> typing while the prompt
is processed -> streamed into paced edits of the persona's webhook messages (plain messages
where webhooks are not allowed) -> sources footer -> message ids stored for replies and reactions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import discord
import yarl
from discord import app_commands

from bots.adapters.discord_commands import CommandHandler, build_tree
from bots.adapters.discord_context import (
    MAX_INPUT_CHARS,
    PLATFORM,
    Conversation,
    Conversations,
    attachments_text,
    mentions_me,
    readable_text,
    well_formed,
)
from bots.adapters.discord_delivery import (
    MESSAGE_LIMIT,
    NO_MENTIONS,
    ChannelSink,
    InteractionSink,
    PersonaWebhooks,
    RetryPolicy,
    WebhookSink,
    defuse_mentions,
    sources_footer,
)
from bots.adapters.render import MessageSink, StreamRenderer
from bots.app import App
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
THREAD_NAME_LIMIT = 100
CHOICES_LIMIT = 25  # Discord shows at most 25 autocomplete choices
CHOICE_NAME_LIMIT = 100
LIST_LIMIT = 1900

BUSY = "I'm busy, try again in a few seconds."
FAILED = "Sorry, something went wrong while answering. Please try again."
NO_SUCH_PERSONA = "That persona doesn't exist: try /persona list."
NO_PERSONAS = "No persona is available right now."
NOT_HERE = "I don't answer in this channel."
INTERRUPTED = "(reply interrupted: the bot is restarting)"
CUT_SHORT = "(reply cut short by an error)"
RESET_CHAINS = (
    "Here each reply chain is its own conversation: post a new message (not a reply) to start "
    "fresh. /reset forgets threads and DMs."
)
THUMBS_UP = "👍"
THUMBS_DOWN = "👎"

Addressed = Literal["dm", "mention", "reply", "channel", "thread"]


class DiscordSetupError(RuntimeError):
    """The adapter cannot start: the message says which setting to fix."""


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


@dataclass(frozen=True)
class _Target:
    """Where a reply goes: how to show it, where to type, how to say a short notice."""

    sink: Callable[[Persona], Awaitable[tuple[MessageSink, int]]]
    notify: Callable[[str], Awaitable[None]]
    typing_in: discord.abc.Messageable | None
    explicit: bool


class PersonaClient(discord.Client):
    """The discord.py client; every event goes to the adapter."""

    def __init__(self, adapter: DiscordAdapter, *, guild_ready_timeout: float) -> None:
        super().__init__(
            intents=intents(),
            allowed_mentions=NO_MENTIONS,
            guild_ready_timeout=guild_ready_timeout,
            max_messages=MESSAGE_CACHE,
            chunk_guilds_at_startup=False,
        )
        self.adapter = adapter
        self.tree = build_tree(self, adapter)
        guard_parsers(self._connection.parsers)

    async def setup_hook(self) -> None:
        try:
            await self.tree.sync()
        except (discord.HTTPException, aiohttp.ClientError) as exc:
            log.warning("could not sync slash commands (%s); the previous set stays", exc)

    async def on_ready(self) -> None:
        self.adapter.set_state("connected")

    async def on_resumed(self) -> None:
        self.adapter.set_state("connected")

    async def on_disconnect(self) -> None:
        if not self.is_closed():
            self.adapter.set_state("reconnecting")

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.on_message(message)

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        self.adapter.on_edit(payload.message_id, payload.data.get("content"))

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        self.adapter.on_delete(payload.message_id)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self.adapter.on_reaction(payload, added=True)

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self.adapter.on_reaction(payload, added=False)


class DiscordAdapter(CommandHandler):
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
        self.client: PersonaClient | None = None
        self.webhooks = PersonaWebhooks()
        self.conversations = Conversations(app.store, self._is_ours)
        self._ready = asyncio.Event()
        self._gateway: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: dict[int, tuple[asyncio.Task[None], str]] = {}
        self._warned_until: dict[str, float] = {}
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Log in, sync the slash commands, connect to the gateway; return once ready."""
        if not self.settings.token:
            raise DiscordSetupError("DISCORD_TOKEN is not set (env, .env or [discord] token)")
        point_client_at(self.settings.api_url, self.settings.gateway_url)
        self.client = PersonaClient(self, guild_ready_timeout=self.guild_ready_timeout_s)
        self.set_state("connecting")
        try:
            await self.client.login(self.settings.token)
        except discord.LoginFailure:
            await self.client.close()
            raise DiscordSetupError(
                "Discord refused DISCORD_TOKEN (401): copy the bot token again from the "
                "Developer Portal (Bot -> Reset Token)"
            ) from None
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            await self.client.close()
            raise DiscordSetupError(
                f"cannot reach Discord at {discord.http.Route.BASE}: {exc}"
            ) from None
        self._gateway = asyncio.create_task(self._connect(self.client))
        ready = asyncio.create_task(self._ready.wait())
        done, _ = await asyncio.wait(
            {ready, self._gateway}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            ready.cancel()
            failure = self._gateway.exception() if self._gateway in done else None
            await self.client.close()
            if isinstance(failure, discord.PrivilegedIntentsRequired):
                raise DiscordSetupError(
                    "Discord refused the Message Content intent: enable it in the Developer "
                    "Portal (Bot -> Privileged Gateway Intents -> Message Content Intent)"
                )
            raise DiscordSetupError(
                f"the Discord gateway did not become ready: {failure or 'timeout'}"
            )
        user = self.client.user
        log.info("Discord: connected as %s (%s)", user, user.id if user else "?")

    async def _connect(self, client: PersonaClient) -> None:
        await client.connect(reconnect=True)

    async def stop(self) -> None:
        """Stop taking messages; give in-flight replies a bounded time, then close them off."""
        self._stopping = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.stop_grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=FINALISE_TIMEOUT_S)
        if self.client is not None:
            await self.client.close()
        if self._gateway is not None:
            try:
                await self._gateway
            except Exception:
                log.debug("gateway task ended with an error", exc_info=True)
        self.set_state("stopped")

    def set_state(self, state: str) -> None:
        """What `/status` shows for Discord."""
        self.app.adapters[self.name] = state
        if state == "connected":
            self._ready.set()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
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

    async def on_message(self, message: discord.Message) -> None:
        """Answer the message if it is for us (see the module docstring for the path)."""
        me = self.client.user if self.client else None
        if self._stopping or me is None or not well_formed(message):
            return
        if message.author.bot or message.webhook_id is not None or message.author.id == me.id:
            return
        if len(message.content) > MAX_INPUT_CHARS:
            log.info("ignored message %s: %d characters", message.id, len(message.content))
            return
        how = await self._addressed(message, me.id)
        if how is None or not self._place_allowed(message.channel, message.guild):
            return
        if not await self._first_sighting(f"message:{message.id}"):
            log.info("message %s was already answered (gateway replay)", message.id)
            return
        task = self._spawn(self._answer(message, how, me.id))
        self._waiting[message.id] = (task, message.content)
        task.add_done_callback(lambda _: self._waiting.pop(message.id, None))

    async def _addressed(self, message: discord.Message, me_id: int) -> Addressed | None:
        if message.guild is None:
            return "dm"
        if mentions_me(message, me_id):
            return "mention"
        if await self.conversations.is_reply_to_us(message):
            return "reply"
        if self._binding(message.channel) is not None:
            return "channel"
        channel = message.channel
        if isinstance(channel, discord.Thread) and channel.owner_id == me_id:
            return "thread"
        return None

    async def _answer(self, message: discord.Message, how: Addressed, me_id: int) -> None:
        explicit = how != "channel"
        target = self._message_target(message, explicit)
        text = "\n\n".join(
            t for t in (readable_text(message, me_id), await attachments_text(message)) if t
        )
        conversation = await self.conversations.of(message)
        persona_id, text = self._choose(text, message.channel, conversation)
        if persona_id is None:
            if explicit:
                await target.notify(NO_PERSONAS)
            return
        if not text:
            persona = self.app.registry.get(persona_id)
            if explicit and persona is not None:
                await target.notify(
                    persona.greeting or f"Hi! I'm {persona.display_name}. Ask me anything."
                )
            return
        incoming = Incoming(
            PLATFORM,
            conversation.place,
            str(message.author.id),
            text,
            persona_id,
            roles=_roles(message.author),
            message_id=str(message.id),
            history=conversation.history,
        )
        await self._reply(incoming, target, check_policy=True, waiting_on=message.id)

    def _choose(
        self, text: str, channel: Any, conversation: Conversation
    ) -> tuple[str | None, str]:
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

    def _place_allowed(self, channel: Any, guild: discord.Guild | None) -> bool:
        policy = self.app.service.policy
        guild_id = str(guild.id) if guild else ""
        ids = [str(channel.id)]
        if isinstance(channel, discord.Thread):
            ids.append(str(channel.parent_id))
        return all(policy.place_allowed(guild_id=guild_id, channel_id=i) for i in ids)

    async def _first_sighting(self, key: str) -> bool:
        store = self.app.store
        return await store.run(store.first_sighting, f"discord:{key}", SEEN_TTL_S)

    def _message_target(self, message: discord.Message, explicit: bool) -> _Target:
        channel = message.channel

        async def sink(persona: Persona) -> tuple[MessageSink, int]:
            return await self._sink_for(channel, message.guild, persona, reference=message)

        async def notify(text: str) -> None:
            await ChannelSink(channel, self.retry, reference=message).send(text)

        return _Target(sink, notify, channel, explicit)

    async def _sink_for(
        self,
        channel: Any,
        guild: discord.Guild | None,
        persona: Persona,
        *,
        reference: discord.Message | None,
    ) -> tuple[MessageSink, int]:
        """The persona's webhook where allowed, else plain messages prefixed with its name."""
        prefix = f"**{persona.display_name}:** " if len(self.app.registry.personas()) > 1 else ""
        limit = MESSAGE_LIMIT - len(prefix)
        plain = ChannelSink(channel, self.retry, reference=reference, prefix=prefix)
        parent = channel.parent if isinstance(channel, discord.Thread) else channel
        if (
            guild is None
            or guild.me is None
            or not isinstance(parent, discord.TextChannel | discord.ForumChannel)
        ):
            return plain, limit
        hook = await self.webhooks.get(parent, persona, guild.me)
        if hook is None:
            return plain, limit
        thread = channel if isinstance(channel, discord.Thread) else None
        sink = WebhookSink(
            hook,
            persona.display_name,
            self.retry,
            thread=thread,
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

    async def _reply(
        self,
        incoming: Incoming,
        target: _Target,
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
                if typing:
                    typing.cancel()
                await self._refused(refused, incoming.user_id, target)
                return
            except EngineBusy:
                if typing:
                    typing.cancel()
                await target.notify(BUSY)
                return
            except EngineError:
                log.exception("the engine failed to start a reply")
                if typing:
                    typing.cancel()
                await target.notify(FAILED)
                return
            sink, limit = await target.sink(reply.persona)
            renderer = StreamRenderer(
                sink, limit, self.settings.edit_interval_s, transform=defuse_mentions
            )
            footer = ""
            try:
                async for piece in reply:
                    await renderer.feed(piece)
                    if renderer.message_ids:
                        if typing:
                            typing.cancel()
                            typing = None
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
                await self.app.store.run(
                    self.app.store.set_message_id, reply.turn_id, message_ids[0]
                )
        except asyncio.CancelledError:
            if self._stopping and renderer is not None and renderer.message_ids:
                await renderer.finish(INTERRUPTED)
            raise
        finally:
            if typing:
                typing.cancel()

    async def _refused(self, refused: ChatRefused, user_id: str, target: _Target) -> None:
        if refused.retry_after_s:
            # Say it once per wait, not to every message of a burst.
            now = time.monotonic()
            if self._warned_until.get(user_id, 0.0) > now:
                return
            self._warned_until[user_id] = now + refused.retry_after_s
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
        me = self.client.user if self.client else None
        return (me is not None and message.author.id == me.id) or self.webhooks.owns(
            message.webhook_id
        )

    # ------------------------------------------------------------------ reactions

    async def on_reaction(self, payload: discord.RawReactionActionEvent, *, added: bool) -> None:
        """A thumbs up/down on one of our replies is stored as feedback (removing it, removed)."""
        me = self.client.user if self.client else None
        name = payload.emoji.name or ""
        value = 1 if name.startswith(THUMBS_UP) else -1 if name.startswith(THUMBS_DOWN) else 0
        if value == 0 or me is None or payload.user_id == me.id:
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

    # ------------------------------------------------------------------ slash commands

    async def admit(self, interaction: discord.Interaction) -> bool:
        if self._stopping:
            return False
        if not await self._first_sighting(f"interaction:{interaction.id}"):
            log.info("interaction %s was already answered (gateway replay)", interaction.id)
            return False
        return True

    async def ask(
        self, interaction: discord.Interaction, question: str, persona: str | None, thread: bool
    ) -> None:
        """`/ask`: answer in the channel (streamed into the response), or in a new thread."""
        # A tracked task, so that stopping the adapter finishes or closes off this reply too.
        await self._spawn(self._ask(interaction, question, persona, thread))

    async def _ask(
        self, interaction: discord.Interaction, question: str, persona: str | None, thread: bool
    ) -> None:
        channel = interaction.channel
        if channel is None or not self._place_allowed(channel, interaction.guild):
            await _ephemeral(interaction, NOT_HERE)
            return
        if persona:
            chosen = self._find_persona(persona)
            if chosen is None:
                await _ephemeral(interaction, NO_SUCH_PERSONA)
                return
            persona_id, text = chosen.id, question
        else:
            found, text = self._choose(question, channel, Conversation(""))
            if found is None:
                await _ephemeral(interaction, NO_PERSONAS)
                return
            persona_id = found
        snapshot = self.app.service.persona(persona_id)
        user_id = str(interaction.user.id)
        roles = _roles(interaction.user)
        decision = self.app.service.policy.check(snapshot, PLATFORM, user_id, roles)
        if not decision.allowed:
            await _ephemeral(interaction, decision.reason)
            return
        if thread and isinstance(channel, discord.TextChannel):
            await self._ask_in_thread(interaction, channel, snapshot, text)
            return
        if isinstance(channel, discord.Thread):
            place = f"thread:{channel.id}"
        elif interaction.guild is None:
            place = f"dm:{channel.id}"
        else:
            place = f"ask:{interaction.id}"
        await interaction.response.defer(thinking=True)
        prefix = f"**{snapshot.display_name}:** "

        async def sink(_: Persona) -> tuple[MessageSink, int]:
            return InteractionSink(interaction, self.retry, prefix=prefix), MESSAGE_LIMIT - len(
                prefix
            )

        async def notify(text: str) -> None:
            await interaction.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)

        incoming = Incoming(PLATFORM, place, user_id, text, persona_id, roles=roles)
        await self._reply(incoming, _Target(sink, notify, None, True), check_policy=False)

    async def _ask_in_thread(
        self,
        interaction: discord.Interaction,
        channel: discord.TextChannel,
        persona: Persona,
        question: str,
    ) -> None:
        header = defuse_mentions(f"**{persona.display_name}** · {question}")[:MESSAGE_LIMIT]
        callback = await interaction.response.send_message(header, allowed_mentions=NO_MENTIONS)
        starter = callback.resource
        if not isinstance(starter, discord.InteractionMessage):
            starter = await interaction.original_response()
        name = " ".join(question.split())[:THREAD_NAME_LIMIT] or persona.display_name
        thread = await starter.create_thread(name=name)
        guild = interaction.guild

        async def sink(snapshot: Persona) -> tuple[MessageSink, int]:
            return await self._sink_for(thread, guild, snapshot, reference=None)

        async def notify(text: str) -> None:
            await ChannelSink(thread, self.retry).send(text)

        incoming = Incoming(
            PLATFORM,
            f"thread:{thread.id}",
            str(interaction.user.id),
            question,
            persona.id,
            roles=_roles(interaction.user),
            message_id=str(starter.id),
        )
        await self._reply(incoming, _Target(sink, notify, thread, True), check_policy=False)

    async def persona_list(self, interaction: discord.Interaction) -> None:
        personas = self.app.registry.personas()
        if not personas:
            await _ephemeral(interaction, NO_PERSONAS)
            return
        lines = [
            f"• **{p.display_name}** (`{p.id}`)" + (f": {p.description}" if p.description else "")
            for p in personas
        ]
        lines.append("Ask with `/ask`, or @mention me and start with `name:`.")
        await _ephemeral(interaction, defuse_mentions("\n".join(lines))[:LIST_LIMIT])

    async def persona_info(self, interaction: discord.Interaction, name: str) -> None:
        persona = self._find_persona(name)
        if persona is None:
            await _ephemeral(interaction, NO_SUCH_PERSONA)
            return
        embed = discord.Embed(title=persona.display_name, description=persona.description or None)
        if persona.starters:
            embed.add_field(
                name="Suggested questions",
                value="\n".join(f"• {s}" for s in persona.starters)[:1024],
                inline=False,
            )
        if persona.knowledge:
            embed.add_field(
                name="Knowledge", value=", ".join(persona.knowledge)[:1024], inline=False
            )
        if persona.discord_channels:
            embed.add_field(
                name="Answers in",
                value=" ".join(f"<#{c}>" for c in persona.discord_channels)[:1024],
                inline=False,
            )
        embed.set_footer(
            text=f"id: {persona.id}" + (" · cites its sources" if persona.citations else "")
        )
        await interaction.response.send_message(
            embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    async def reset(self, interaction: discord.Interaction) -> None:
        channel = interaction.channel
        if isinstance(channel, discord.Thread):
            place = f"thread:{channel.id}"
        elif interaction.guild is None and channel is not None:
            place = f"dm:{channel.id}"
        else:
            await _ephemeral(interaction, RESET_CHAINS)
            return
        forgotten = await self.app.service.reset(PLATFORM, place)
        await _ephemeral(interaction, f"Done: I forgot this conversation ({forgotten} messages).")

    def persona_choices(self, current: str) -> list[app_commands.Choice[str]]:
        wanted = current.lower()
        return [
            app_commands.Choice(name=f"{p.display_name} ({p.id})"[:CHOICE_NAME_LIMIT], value=p.id)
            for p in self.app.registry.personas()
            if wanted in p.id.lower() or wanted in p.display_name.lower()
        ][:CHOICES_LIMIT]

    def starter_choices(self, persona: str | None, current: str) -> list[app_commands.Choice[str]]:
        chosen = (
            self._find_persona(persona)
            if persona
            else self._find_persona(self.app.settings.default_persona)
        )
        if chosen is None:
            personas = self.app.registry.personas()
            chosen = personas[0] if personas else None
        starters = chosen.starters if chosen is not None else ()
        wanted = current.lower()
        return [
            app_commands.Choice(name=s[:CHOICE_NAME_LIMIT], value=s[:CHOICE_NAME_LIMIT])
            for s in starters
            if wanted in s.lower()
        ][:CHOICES_LIMIT]

    async def command_failed(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        log.error("slash command failed", exc_info=error)
        try:
            await _ephemeral(interaction, FAILED)
        except (discord.HTTPException, aiohttp.ClientError):
            log.debug("could not tell the user about the failure", exc_info=True)

    def _find_persona(self, name: str) -> Persona | None:
        wanted = name.strip().lower()
        for persona in self.app.registry.personas():
            if wanted in (persona.id.lower(), persona.display_name.lower()):
                return persona
        return None


async def _ephemeral(interaction: discord.Interaction, text: str) -> None:
    """A short answer only the user sees (as a follow-up if the response is already used)."""
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
    else:
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)


def _roles(user: discord.User | discord.Member) -> tuple[str, ...]:
    """Role ids and names, for persona `access.roles` (either form works)."""
    if not isinstance(user, discord.Member):
        return ()
    roles = [r for r in user.roles if not r.is_default()]
    return tuple(str(r.id) for r in roles) + tuple(r.name for r in roles)
