"""Slack adapter: the personas in Slack, through slack-bolt's async app.

Socket Mode (`SLACK_BOT_TOKEN` + `SLACK_APP_TOKEN`, no public URL) or HTTP Events mode
(`SLACK_BOT_TOKEN` + `SLACK_SIGNING_SECRET`, Bolt's `/slack/events` on `SLACK_HTTP_PORT`).
This module connects, registers the listeners and stops; a message's path is in `messages.py`
(listener middleware, then the shared reply lifecycle), the slash commands in `commands.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bots.adapters.delivery import Delivery
from bots.adapters.slack.commands import SlackCommands
from bots.adapters.slack.events import USER_ID, parse_reaction
from bots.adapters.slack.messages import PLATFORM, SlackMessages
from bots.adapters.slack.reply import EditPacer, Identity, Poster, SlackLimits, error_code
from bots.adapters.slack.surface import SlackPlace, Streaming
from bots.adapters.slack.views import home_view
from bots.chat.service import ChatService
from bots.persona.model import Persona
from bots.settings import SlackSettings

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
SLACK_API_URL = "https://slack.com/api/"
# Slack's events are a few kilobytes; a message's text is at most 40,000 characters.
MAX_REQUEST_BYTES = 1024 * 1024
# 429s are waited out (Retry-After) this many times per call before giving up.
RATE_LIMIT_RETRIES = 3


class SlackConfigError(ValueError):
    """The Slack settings cannot work; the message names the setting to fix."""


def api_base_url(url: str) -> str:
    """The Web API base URL; slack_sdk drops the last path segment without a trailing slash."""
    url = url or SLACK_API_URL
    return url if url.endswith("/") else url + "/"


def check_settings(settings: SlackSettings) -> None:
    """Raise SlackConfigError naming the setting when the tokens cannot work together."""
    if not settings.bot_token.startswith("xoxb-"):
        raise SlackConfigError("SLACK_BOT_TOKEN must be the app's bot token (it starts with xoxb-)")
    if settings.app_token and not settings.app_token.startswith("xapp-"):
        raise SlackConfigError("SLACK_APP_TOKEN must be an app-level token (it starts with xapp-)")
    if not settings.app_token and not settings.signing_secret:
        raise SlackConfigError(
            "SLACK_BOT_TOKEN is set but neither SLACK_APP_TOKEN (Socket Mode) nor "
            "SLACK_SIGNING_SECRET (HTTP Events mode) is"
        )


class SlackAdapter:
    """The personas in one Slack workspace."""

    name = PLATFORM

    def __init__(
        self,
        service: ChatService,
        connections: dict[str, str],
        *,
        settings: SlackSettings | None = None,
        limits: SlackLimits | None = None,
    ) -> None:
        settings = settings or service.settings.slack
        check_settings(settings)
        self.service = service
        self.connections = connections
        self.settings = settings
        self.limits = limits or SlackLimits()
        self.socket_mode = bool(settings.app_token)
        self.client = AsyncWebClient(
            token=settings.bot_token, base_url=api_base_url(settings.api_url)
        )
        self.client.retry_handlers.append(
            AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES)
        )
        self.bolt = AsyncApp(
            name="bots",
            client=self.client,
            signing_secret=settings.signing_secret,
            request_verification_enabled=not self.socket_mode,
            # Runs after the signature check and before Bolt's own parsing of the event.
            before_authorize=self._well_formed,
        )
        self.http_port = 0
        self._socket: AsyncSocketModeHandler | None = None
        self._runner: web.AppRunner | None = None
        self._accepting = False
        self._tasks: set[asyncio.Task[Any]] = set()
        pacer = EditPacer(self.limits.update_interval_s, self.limits.updates_per_minute)
        self.place = SlackPlace(
            self.client,
            Poster(self.client),
            self.limits,
            pacer,
            Streaming(settings.streaming),
            self._identity,
        )
        self.messages = SlackMessages(
            service,
            service.registry,
            Delivery(service, place_interval_s=pacer.interval),
            self.place,
            default_persona=service.settings.default_persona,
            accepting=lambda: self._accepting,
            tracked=self._tracked,
        )
        self.commands = SlackCommands(self.messages)
        self._register()

    def _register(self) -> None:
        bolt, messages = self.bolt, self.messages
        for kind in ("app_mention", "message"):
            bolt.event(kind, middleware=messages.middleware())(messages.answer)
        bolt.event("reaction_added")(self._on_reaction_added)
        bolt.event("reaction_removed")(self._on_reaction_removed)
        bolt.event("app_home_opened")(self._on_home_opened)
        bolt.command("/ask")(self.commands.ask)
        bolt.command("/persona")(self.commands.persona)

    # ---- lifecycle ----

    async def start(self) -> None:
        """Check the bot token, then connect (Socket Mode) or listen (HTTP Events mode)."""
        try:
            auth = await self.client.auth_test()
        except SlackApiError as exc:
            raise SlackConfigError(f"Slack refused SLACK_BOT_TOKEN ({error_code(exc)})") from exc
        self.messages.bot_user_id = str(auth.get("user_id") or "")
        self.messages.team_id = str(auth.get("team_id") or "")
        self._accepting = True
        if self.socket_mode:
            await self._connect_socket()
        else:
            await self._listen_http()
        self._set_state("connected")
        where = "Socket Mode" if self.socket_mode else f"HTTP port {self.http_port}"
        log.info("slack: connected (%s) as %s", where, self.messages.bot_user_id)

    async def _connect_socket(self) -> None:
        handler = AsyncSocketModeHandler(
            self.bolt,
            self.settings.app_token,
            web_client=self.client,
            ping_interval=self.limits.ping_interval_s,
        )
        # Opening the first connection here turns a bad app token into a clear error instead of
        # the client's endless retries; later reconnections ask for fresh URLs themselves.
        try:
            opened = await self.client.apps_connections_open(app_token=self.settings.app_token)
        except SlackApiError as exc:
            raise SlackConfigError(f"Slack refused SLACK_APP_TOKEN ({error_code(exc)})") from exc
        handler.client.wss_uri = str(opened["url"])
        handler.client.message_listeners.append(self._on_socket_message)
        handler.client.on_close_listeners.append(self._on_socket_close)
        self._socket = handler
        await handler.connect_async()  # type: ignore[no-untyped-call]  # unannotated in Bolt

    async def _listen_http(self) -> None:
        web_app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        web_app.router.add_post(EVENTS_PATH, self._handle_http)
        runner = web.AppRunner(web_app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.settings.http_host, self.settings.http_port).start()
        self._runner = runner
        address = runner.addresses[0] if runner.addresses else None
        self.http_port = int(address[1]) if address else self.settings.http_port

    async def _handle_http(self, request: web.Request) -> web.Response:
        """Bolt's aiohttp adapter, refusing a body that is not even JSON or a form."""
        try:
            bolt_request = await to_bolt_request(request)
        except ValueError:
            return web.Response(status=400, text="malformed request body")
        return await to_aiohttp_response(await self.bolt.async_dispatch(bolt_request))

    async def stop(self) -> None:
        """Stop taking events, give in-flight replies a bounded time, cut the rest with a note."""
        self._accepting = False
        if self._socket is not None:
            await self._socket.close_async()  # type: ignore[no-untyped-call]
        if self._runner is not None:
            await self._runner.cleanup()
        pending = set(self._tasks)
        if pending:
            grace = min(self.limits.stop_grace_s, self.service.settings.server.shutdown_grace_s / 2)
            _, pending = await asyncio.wait(pending, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._set_state("stopped")

    def _set_state(self, state: str) -> None:
        self.connections[self.name] = state

    async def _on_socket_message(self, _client: Any, message: dict[str, Any], _raw: Any) -> None:
        kind = message.get("type")
        if kind == "hello":
            self._set_state("connected")
        elif kind == "disconnect":
            self._set_state("reconnecting")

    async def _on_socket_close(self, _message: Any) -> None:
        if self._accepting:
            self._set_state("reconnecting")

    @contextlib.asynccontextmanager
    async def _tracked(self) -> AsyncIterator[None]:
        """Count the current listener as in flight, so `stop` can wait for it."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            yield
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _well_formed(
        self, body: Any, response: BoltResponse, next_: Callable[[], Awaitable[None]]
    ) -> BoltResponse:
        """Acknowledge, and drop, event envelopes too broken for Bolt's own matching."""
        if isinstance(body, dict) and body.get("type") == "event_callback":
            event = body.get("event")
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                log.info("slack: ignored a malformed event envelope (%s)", body.get("event_id"))
                return BoltResponse(status=200, body="")
        await next_()
        return response

    @property
    def bot_user_id(self) -> str:
        """The app's bot user (known once `start` has checked the token)."""
        return self.messages.bot_user_id

    @property
    def streaming(self) -> bool:
        """Whether replies try Slack's streaming API (off once the workspace refuses it)."""
        return self.place.streaming.on

    @streaming.setter
    def streaming(self, on: bool) -> None:
        self.place.streaming.on = on

    def _identity(self, persona: Persona) -> Identity:
        base = self.settings.icon_base_url.rstrip("/")
        icon = f"{base}/{persona.id}/{persona.avatar.name}" if base and persona.avatar else ""
        return Identity(persona.display_name, icon)

    # ---- App Home and feedback ----

    async def _on_home_opened(self, event: dict[str, Any]) -> None:
        user = event.get("user")
        if event.get("tab") != "home" or not (isinstance(user, str) and USER_ID.match(user)):
            return
        try:
            view = home_view(self.service.registry.personas())
            await self.client.views_publish(user_id=user, view=view)
        except SlackApiError as exc:
            log.warning("slack: publishing the App Home failed: %s", error_code(exc))

    async def _on_reaction_added(self, event: dict[str, Any]) -> None:
        await self._feedback(event, added=True)

    async def _on_reaction_removed(self, event: dict[str, Any]) -> None:
        await self._feedback(event, added=False)

    async def _feedback(self, event: dict[str, Any], *, added: bool) -> None:
        """A thumbs up/down on a bot reply is stored as feedback on that reply's turn."""
        reaction = parse_reaction(event)
        if reaction is not None:
            await self.service.react(
                PLATFORM, reaction.key, reaction.user, reaction.value, added=added
            )
