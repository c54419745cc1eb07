"""One logged-in Discord bot: its login, intents, gateway guard and event hand-off.

`PersonaClient` is a plain `discord.Client` that passes every event it gets to the adapter
(`ClientEvents`); the main bot also carries the slash commands. Where REST and the gateway live
is a class attribute in discord.py, so `point_client_at` sets it once for every client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import discord
import yarl
from discord import app_commands

from bots.adapters.discord.ratelimits import SharedRestLimits
from bots.adapters.discord.sinks import NO_MENTIONS
from bots.store.base import RestLimits

log = logging.getLogger(__name__)

DISCORD_API_URL = "https://discord.com/api/v10"
DISCORD_GATEWAY_URL = "wss://gateway.discord.gg/"
MESSAGE_CACHE = 1000


class ClientEvents(Protocol):
    """What a client hands its events to (the adapter)."""

    def connection_changed(self, client: PersonaClient, state: str) -> None: ...

    async def on_message(self, client: PersonaClient, message: discord.Message) -> None: ...

    def on_edit(self, message_id: int, content: Any) -> None: ...

    def on_delete(self, message_id: int) -> None: ...

    async def on_reaction(
        self, payload: discord.RawReactionActionEvent, *, added: bool
    ) -> None: ...


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
        self,
        adapter: ClientEvents,
        login: BotLogin,
        *,
        guild_ready_timeout: float,
        commands: Callable[[discord.Client], app_commands.CommandTree[discord.Client]],
        shard: tuple[int, int] | None = None,
        rest_limits: RestLimits | None = None,
    ) -> None:
        # One gateway shard (id, count) when the bot is sharded; the whole bot otherwise.
        options: dict[str, Any] = {"shard_id": shard[0], "shard_count": shard[1]} if shard else {}
        # Several instances on one token: their REST rate limits are shared through the store.
        if rest_limits is not None:
            options["http_trace"] = SharedRestLimits(rest_limits).trace()
        super().__init__(
            intents=intents(),
            allowed_mentions=NO_MENTIONS,
            guild_ready_timeout=guild_ready_timeout,
            max_messages=MESSAGE_CACHE,
            chunk_guilds_at_startup=False,
            **options,
        )
        self.adapter = adapter
        self.login_as = login
        self.ready = asyncio.Event()
        self.tree = commands(self) if login.persona_id is None else None
        guard_parsers(self._connection.parsers)

    @property
    def persona_id(self) -> str | None:
        return self.login_as.persona_id

    async def log_in(self) -> None:
        """Log in with this bot's token; a refusal or an outage is a DiscordSetupError."""
        setting = self.login_as.setting
        try:
            await self.login(self.login_as.token)
        except discord.LoginFailure:
            raise DiscordSetupError(
                f"Discord refused {setting} (401): copy the bot token again from the "
                "Developer Portal (Bot -> Reset Token)"
            ) from None
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            raise DiscordSetupError(
                f"cannot reach Discord at {discord.http.Route.BASE} ({setting}): {exc}"
            ) from None

    async def until_ready(self, gateway: asyncio.Task[None], timeout_s: float) -> None:
        """Wait for READY on `gateway` (this client's `connect` task), or say why not."""
        ready = asyncio.create_task(self.ready.wait())
        done, _ = await asyncio.wait(
            {ready, gateway}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if ready in done:
            return
        ready.cancel()
        failure = gateway.exception() if gateway in done else None
        if isinstance(failure, discord.PrivilegedIntentsRequired):
            raise DiscordSetupError(
                f"Discord refused the Message Content intent for {self.login_as.setting}: "
                "enable it in the Developer Portal (Bot -> Privileged Gateway Intents)"
            )
        raise DiscordSetupError(f"the Discord gateway did not become ready: {failure or 'timeout'}")

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
