"""Slack adapter: the personas in Slack, through slack-bolt's async app.

Socket Mode (`SLACK_BOT_TOKEN` + `SLACK_APP_TOKEN`, no public URL) or HTTP Events mode
(`SLACK_BOT_TOKEN` + `SLACK_SIGNING_SECRET`, Bolt's `/slack/events` on `SLACK_HTTP_PORT`).

A message is answered when it @mentions the app, is a DM, continues a thread the bot replies in,
or is posted in a channel bound to a persona. The path of one message, top to bottom:
parse (malformed -> ignored) -> skip bots, own and edited messages -> place allowlist -> addressed
to us? -> first sighting of channel+ts (Slack retries, the `app_mention`/`message` twin) ->
choose persona -> access and rate limit -> stream the reply into the thread -> remember which
message shows the reply (for thumbs-up/down feedback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bots.adapters.slack.events import (
    CHANNEL_ID,
    USER_ID,
    SlackMessage,
    parse_message,
    parse_reaction,
)
from bots.adapters.slack.format import defuse_broadcasts, escape, from_mrkdwn, to_mrkdwn
from bots.adapters.slack.reply import (
    EditPacer,
    Identity,
    Poster,
    ReplyView,
    SlackLimits,
    StreamView,
    UpdateView,
    error_code,
)
from bots.adapters.slack.views import home_view, persona_info, persona_list, sources_block
from bots.app import App
from bots.chat.policy import NoticeThrottle
from bots.chat.router import route
from bots.chat.service import ChatRefused, Incoming, Reply
from bots.engine.base import ChatMessage, EngineBusy, EngineError
from bots.persona.model import Persona
from bots.settings import SlackSettings

log = logging.getLogger(__name__)

PLATFORM: Final = "slack"
EVENTS_PATH = "/slack/events"
SLACK_API_URL = "https://slack.com/api/"
# Slack's events are a few kilobytes; a message's text is at most 40,000 characters.
MAX_REQUEST_BYTES = 1024 * 1024
# 429s are waited out (Retry-After) this many times per call before giving up.
RATE_LIMIT_RETRIES = 3
# Threads the bot replies in, kept in memory for the cheap check (the store knows the rest).
MAX_REMEMBERED_THREADS = 10_000
# Messages of a thread read from Slack when the store has none of it.
THREAD_HISTORY_LIMIT = 20
BUSY_REACTION = "hourglass_flowing_sand"
ERROR_REACTION = "x"
INTERRUPTED_NOTE = "(reply interrupted: the bot is restarting)"
FAILED_NOTE = "(reply failed: the model stopped with an error; try again)"
NO_PERSONA = "No persona is loaded yet: add one under `personas/` and try again."
ASK_USAGE = "Usage: `/ask [persona] question`, e.g. `/ask tutor What is a monad?`"
PERSONA_USAGE = "Usage: `/persona list` or `/persona info NAME`"


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
        self, app: App, *, settings: SlackSettings | None = None, limits: SlackLimits | None = None
    ) -> None:
        settings = settings or app.settings.slack
        check_settings(settings)
        self.app = app
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
        self.poster = Poster(self.client)
        self.pacer = EditPacer(self.limits.update_interval_s, self.limits.updates_per_minute)
        self.streaming = settings.streaming
        self.bot_user_id = ""
        self.team_id = ""
        self.http_port = 0
        self._socket: AsyncSocketModeHandler | None = None
        self._runner: web.AppRunner | None = None
        self._accepting = False
        self._threads: dict[str, None] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._replies_at = -self.limits.replies_interval_s
        self._rate_notices = NoticeThrottle()
        self._register()

    def _register(self) -> None:
        bolt = self.bolt
        bolt.event("app_mention")(self._on_message)
        bolt.event("message")(self._on_message)
        bolt.event("reaction_added")(self._on_reaction_added)
        bolt.event("reaction_removed")(self._on_reaction_removed)
        bolt.event("app_home_opened")(self._on_home_opened)
        bolt.command("/ask")(self._on_ask)
        bolt.command("/persona")(self._on_persona)

    # ---- lifecycle ----

    async def start(self) -> None:
        """Check the bot token, then connect (Socket Mode) or listen (HTTP Events mode)."""
        try:
            auth = await self.client.auth_test()
        except SlackApiError as exc:
            raise SlackConfigError(f"Slack refused SLACK_BOT_TOKEN ({error_code(exc)})") from exc
        self.bot_user_id = str(auth.get("user_id") or "")
        self.team_id = str(auth.get("team_id") or "")
        self._accepting = True
        if self.socket_mode:
            await self._connect_socket()
        else:
            await self._listen_http()
        self._set_state("connected")
        where = "Socket Mode" if self.socket_mode else f"HTTP port {self.http_port}"
        log.info("slack: connected (%s) as %s", where, self.bot_user_id)

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
            grace = min(self.limits.stop_grace_s, self.app.settings.server.shutdown_grace_s / 2)
            _, pending = await asyncio.wait(pending, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._set_state("stopped")

    def _set_state(self, state: str) -> None:
        self.app.adapters[self.name] = state

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

    # ---- messages ----

    async def _on_message(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        message = parse_message(event, body.get("team_id"))
        if message is None or message.user == self.bot_user_id or not self._accepting:
            return
        if not self.app.service.policy.place_allowed(
            channel_id=message.channel, team_id=message.team
        ):
            return
        if not await self._addressed(message):
            return
        store = self.app.store
        key, ttl = f"slack:{message.key}", self.limits.dedup_ttl_s
        if not await store.run(store.first_sighting, key, ttl):
            return
        async with self._tracked():
            try:
                await self._answer(message)
            except SlackApiError as exc:
                log.warning("slack: replying to %s failed: %s", message.key, error_code(exc))

    async def _addressed(self, message: SlackMessage) -> bool:
        """Is the message for the bot: a mention, a DM, a bound channel or the bot's thread?"""
        if message.mention or message.is_dm or f"<@{self.bot_user_id}" in message.text:
            return True
        if any(message.channel in p.slack_channels for p in self.app.registry.personas()):
            return True
        return message.in_thread and await self._bot_in_thread(message.channel, message.root_ts)

    def _joined(self, place: str) -> None:
        """Remember a thread the bot replies in (the oldest are forgotten past a bound)."""
        self._threads[place] = None
        if len(self._threads) > MAX_REMEMBERED_THREADS:
            del self._threads[next(iter(self._threads))]

    async def _bot_in_thread(self, channel: str, root_ts: str) -> bool:
        place = f"{channel}:{root_ts}"
        if place in self._threads:
            return True
        # The thread started with a message the bot answered (known across restarts).
        store = self.app.store
        return await store.run(store.turn_by_message, PLATFORM, place) is not None

    async def _answer(self, message: SlackMessage) -> None:
        text = from_mrkdwn(message.text, strip_user=self.bot_user_id)
        place = f"{message.channel}:{message.root_ts}"
        stored, thread_persona = await self._thread_memory(place) if message.in_thread else (0, "")
        chosen = route(
            self.app.registry.personas(),
            text,
            platform=PLATFORM,
            channel_id=message.channel,
            default=thread_persona or self.app.settings.default_persona,
        )
        persona = self.app.registry.get(chosen.persona_id) if chosen.persona_id else None
        if persona is None:
            await self.poster.post(message.channel, NO_PERSONA, thread_ts=message.root_ts)
            return
        identity = self._identity(persona)
        if not chosen.text:
            greeting = persona.greeting or f"Hi, I'm {persona.display_name}. Ask me something."
            await self.poster.post(
                message.channel, to_mrkdwn(greeting), thread_ts=message.root_ts, identity=identity
            )
            return
        decision = self.app.service.policy.check(persona, PLATFORM, message.user)
        if not decision.allowed:
            # A flood hears "too fast" once per wait, not once per message.
            if self._rate_notices.should_notify(message.user, decision.retry_after_s):
                await self._tell(message.channel, message.user, decision.reason, message.root_ts)
            return
        history = await self._thread_history(message) if message.in_thread and not stored else ()
        incoming = Incoming(
            PLATFORM,
            place,
            message.user,
            chosen.text,
            persona.id,
            message_id=message.key,
            history=history,
        )
        recipient = None if message.is_dm else (message.user, message.team or self.team_id)
        self._joined(place)
        await self._reply(
            incoming, persona, message.channel, message.root_ts, message.ts, recipient
        )

    async def _thread_memory(self, place: str) -> tuple[int, str]:
        """How many turns the store holds for a thread, and the persona that last answered."""
        store = self.app.store
        conversation = await store.run(store.conversation_id, PLATFORM, place)
        turns = await store.run(store.history, conversation, THREAD_HISTORY_LIMIT)
        last = next((t.persona_id for t in reversed(turns) if t.role == "assistant"), "")
        return len(turns), last

    async def _thread_history(self, message: SlackMessage) -> tuple[ChatMessage, ...]:
        """A thread the store has never seen, read from Slack, at most once a minute."""
        now = time.monotonic()
        if now - self._replies_at < self.limits.replies_interval_s:
            return ()
        self._replies_at = now
        try:
            response = await self.client.conversations_replies(
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

    def _identity(self, persona: Persona) -> Identity:
        base = self.settings.icon_base_url.rstrip("/")
        icon = f"{base}/{persona.id}/{persona.avatar.name}" if base and persona.avatar else ""
        return Identity(persona.display_name, icon)

    # ---- replies ----

    async def _reply(
        self,
        incoming: Incoming,
        persona: Persona,
        channel: str,
        thread_ts: str,
        source_ts: str,
        recipient: tuple[str, str] | None,
    ) -> None:
        """Generate a reply and show it in a thread as it grows."""
        identity = self._identity(persona)
        view = self._view(channel, thread_ts, identity, recipient)
        # A placeholder is posted while the prompt is prepared, not after.
        opening = asyncio.ensure_future(view.open())
        try:
            reply = await self.app.service.start(incoming, check_policy=False)
        except (ChatRefused, EngineError) as exc:
            await opening
            await self._refused(
                exc, view, channel, thread_ts, source_ts, identity, incoming.user_id
            )
            return
        except BaseException:
            opening.cancel()
            raise
        try:
            await opening
        except BaseException:
            await _discard(reply)
            raise
        self.pacer.active += 1
        try:
            async for piece in reply:
                await view.feed(piece)
            block = sources_block(reply.sources) if persona.citations else None
            await view.finish([block] if block else [])
        except EngineError:
            log.exception("slack: generation failed for %s", incoming.message_id)
            await view.abort(FAILED_NOTE)
            await self._react(channel, source_ts, ERROR_REACTION)
        except asyncio.CancelledError:
            await view.abort(INTERRUPTED_NOTE)
            raise
        finally:
            self.pacer.active -= 1
            if isinstance(view, StreamView) and view.unsupported:
                self.streaming = False
            if reply.turn_id is not None and view.message_ids:
                store = self.app.store
                shown = f"{channel}:{view.message_ids[0]}"
                await store.run(store.set_message_id, reply.turn_id, shown)

    def _view(
        self, channel: str, thread_ts: str, identity: Identity, recipient: tuple[str, str] | None
    ) -> ReplyView:
        def updates(placeholder_ts: str = "") -> UpdateView:
            return UpdateView(
                self.poster,
                channel,
                thread_ts,
                identity,
                self.limits,
                self.pacer,
                placeholder_ts=placeholder_ts,
            )

        if not self.streaming:
            return updates()
        return StreamView(
            self.poster, channel, thread_ts, identity, recipient, self.limits, updates
        )

    async def _refused(
        self,
        exc: ChatRefused | EngineError,
        view: ReplyView,
        channel: str,
        thread_ts: str,
        source_ts: str,
        identity: Identity,
        user: str,
    ) -> None:
        """Never silence: say why there is no answer, where the answer would have been."""
        if isinstance(exc, ChatRefused):
            note = exc.user_message
        elif isinstance(exc, EngineBusy):
            note = f"I'm busy with other questions; please ask again in {exc.retry_after_s:.0f}s."
            await self._react(channel, source_ts, BUSY_REACTION)
        else:
            log.error("slack: the engine failed: %s", exc)
            note = "Sorry, something went wrong while answering. Please try again."
            await self._react(channel, source_ts, ERROR_REACTION)
        if isinstance(view, UpdateView):
            await view.abort(note)
        elif isinstance(exc, ChatRefused):
            await self._tell(channel, user, note, thread_ts)
        else:
            await self.poster.post(channel, note, thread_ts=thread_ts, identity=identity)

    async def _tell(self, channel: str, user: str, text: str, thread_ts: str = "") -> None:
        """A message only `user` sees (refusals: access, rate limit)."""
        args: dict[str, Any] = {"channel": channel, "user": user, "text": escape(text)}
        if thread_ts:
            args["thread_ts"] = thread_ts
        try:
            await self.client.chat_postEphemeral(**args)
        except SlackApiError as exc:
            log.info("slack: could not tell %s: %s", user, error_code(exc))

    async def _react(self, channel: str, ts: str, name: str) -> None:
        try:
            await self.client.reactions_add(channel=channel, timestamp=ts, name=name)
        except SlackApiError as exc:
            log.debug("slack: reaction %s not added: %s", name, error_code(exc))

    # ---- slash commands ----

    async def _on_ask(
        self,
        ack: Callable[..., Awaitable[None]],
        command: dict[str, Any],
        respond: Callable[..., Awaitable[Any]],
    ) -> None:
        """`/ask [persona] question`: acknowledged at once; the answer follows in a thread."""
        await ack()
        channel, user = command.get("channel_id"), command.get("user_id")
        text = command.get("text")
        if not (isinstance(channel, str) and CHANNEL_ID.match(channel)):
            return
        if not (isinstance(user, str) and USER_ID.match(user) and isinstance(text, str)):
            return
        if not self._accepting:
            await respond(text="The bot is restarting; please ask again in a minute.")
            return
        team = command.get("team_id") if isinstance(command.get("team_id"), str) else ""
        if not self.app.service.policy.place_allowed(channel_id=channel, team_id=str(team)):
            await respond(text="I don't answer in this channel.")
            return
        persona, question = self._ask_target(from_mrkdwn(text), channel)
        if persona is None or not question:
            await respond(text=NO_PERSONA if persona is None and question else ASK_USAGE)
            return
        decision = self.app.service.policy.check(persona, PLATFORM, user)
        if not decision.allowed:
            await respond(text=escape(decision.reason))
            return
        async with self._tracked():
            await self._answer_ask(persona, question, channel, user, str(team), command, respond)

    async def _answer_ask(
        self,
        persona: Persona,
        question: str,
        channel: str,
        user: str,
        team: str,
        command: dict[str, Any],
        respond: Callable[..., Awaitable[Any]],
    ) -> None:
        asker = command.get("user_name") if isinstance(command.get("user_name"), str) else "someone"
        shown = defuse_broadcasts(escape(question))
        header = f"_/ask from {escape(str(asker))}:_ {shown}"
        try:
            root = await self.poster.post(channel, header, identity=self._identity(persona))
        except SlackApiError as exc:
            # Not a member of the channel: answer privately through the command's response_url.
            log.info("slack: /ask in %s answered privately (%s)", channel, error_code(exc))
            await self._respond_privately(persona, question, channel, user, respond)
            return
        place = f"{channel}:{root}"
        self._joined(place)
        incoming = Incoming(PLATFORM, place, user, question, persona.id, message_id=place)
        recipient = None if channel.startswith("D") else (user, team or self.team_id)
        await self._reply(incoming, persona, channel, root, root, recipient)

    async def _respond_privately(
        self,
        persona: Persona,
        question: str,
        channel: str,
        user: str,
        respond: Callable[..., Awaitable[Any]],
    ) -> None:
        incoming = Incoming(PLATFORM, f"{channel}:/ask:{user}", user, question, persona.id)
        try:
            reply = await self.app.service.start(incoming, check_policy=False)
            async for _ in reply:
                pass
        except (ChatRefused, EngineError) as exc:
            note = exc.user_message if isinstance(exc, ChatRefused) else "Please try again later."
            await respond(text=escape(note))
            return
        await respond(text=to_mrkdwn(reply.text))

    def _ask_target(self, text: str, channel: str) -> tuple[Persona | None, str]:
        """`/ask tutor question`, `/ask tutor: question`, or the channel's/default persona."""
        personas = self.app.registry.personas()
        first, _, rest = text.strip().partition(" ")
        named = first.rstrip(":,").lower()
        for persona in personas:
            if rest.strip() and named in (persona.id, persona.display_name.lower()):
                return persona, rest.strip()
        chosen = route(
            personas,
            text,
            platform=PLATFORM,
            channel_id=channel,
            default=self.app.settings.default_persona,
        )
        fallback = self.app.registry.get(chosen.persona_id) if chosen.persona_id else None
        return fallback, chosen.text

    async def _on_persona(
        self, ack: Callable[..., Awaitable[None]], command: dict[str, Any]
    ) -> None:
        """`/persona list` and `/persona info NAME`, answered in the acknowledgement itself."""
        text = command.get("text") if isinstance(command.get("text"), str) else ""
        words = str(text).split()
        personas = self.app.registry.personas()
        if not words or words[0].lower() == "list":
            await ack(text=persona_list(personas))
        elif words[0].lower() == "info" and len(words) > 1:
            wanted = " ".join(words[1:]).lower()
            found = [p for p in personas if wanted in (p.id, p.display_name.lower())]
            await ack(
                text=persona_info(found[0])
                if found
                else f"No persona named `{escape(wanted)}`; `/persona list` shows them."
            )
        else:
            await ack(text=PERSONA_USAGE)

    # ---- App Home and feedback ----

    async def _on_home_opened(self, event: dict[str, Any]) -> None:
        user = event.get("user")
        if event.get("tab") != "home" or not (isinstance(user, str) and USER_ID.match(user)):
            return
        try:
            view = home_view(self.app.registry.personas())
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
        if reaction is None:
            return
        store = self.app.store
        turn = await store.run(store.turn_by_message, PLATFORM, reaction.key)
        if turn is None or turn.role != "assistant":
            return
        change = store.add_feedback if added else store.remove_feedback
        await store.run(change, turn.id, reaction.user, reaction.value)


async def _discard(reply: Reply) -> None:
    """Stop a reply that will not be shown (its generator then frees the engine)."""
    async for _ in reply:
        break
