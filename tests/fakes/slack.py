"""A loopback fake Slack: the Web API methods the adapter uses, Socket Mode, and signed HTTP events.

The bot under test is the real slack-bolt app talking to this server through
`AsyncWebClient(base_url=FakeSlack.api_url)`. The fake keeps what Slack would keep (messages,
threads, reactions, views) and records every call, so tests assert on what was sent.

Payload shapes follow Slack's documentation and bolt-python's own test fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from slack_sdk.signature import SignatureVerifier

BOT_TOKEN = "xoxb-0000-fake-bot-token"
APP_TOKEN = "xapp-1-fake-app-token"
SIGNING_SECRET = "fake-signing-secret-0123456789"
TEAM = "T0TEAM001"
APP_ID = "A0APP0001"
BOT_USER = "U0BOT0001"
BOT_ID = "B0BOT0001"
USER = "U0USER001"
CHANNEL = "C0CHAN001"
DM = "D0DM00001"
SCOPES = "app_mentions:read,channels:history,chat:write,chat:write.customize,commands,im:history"
MAX_TEXT = 40_000
# Message timestamps are unique across every fake of a test session, as they are per channel in
# Slack: the bot's store outlives one fake and de-duplicates by channel + ts.
_TS_COUNTER = itertools.count(1)


@dataclass
class Call:
    """One Web API call the fake received."""

    method: str
    args: dict[str, Any]
    at: float


@dataclass
class Message:
    """A message as Slack stores it."""

    channel: str
    ts: str
    text: str
    user: str = ""
    bot_id: str = ""
    thread_ts: str = ""
    username: str = ""
    icon_url: str = ""
    blocks: list[dict[str, Any]] = field(default_factory=list)
    stream: str = ""  # "", "in_progress" or "completed"
    edits: int = 0

    def as_api(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text}
        if self.user:
            data["user"] = self.user
        if self.bot_id:
            data["bot_id"] = self.bot_id
        if self.thread_ts:
            data["thread_ts"] = self.thread_ts
        if self.blocks:
            data["blocks"] = self.blocks
        return data


@dataclass
class Envelope:
    """A Socket Mode envelope waiting for its ack."""

    envelope_id: str
    kind: str
    payload: dict[str, Any]
    retry_attempt: int = 0
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    ack_payload: dict[str, Any] | None = None
    sent_at: float = 0.0
    acked_at: float = 0.0

    def frame(self) -> str:
        return json.dumps(
            {
                "envelope_id": self.envelope_id,
                "type": self.kind,
                "payload": self.payload,
                "accepts_response_payload": self.kind != "events_api",
                "retry_attempt": self.retry_attempt,
                "retry_reason": "timeout" if self.retry_attempt else "",
            }
        )


class FakeSlack:
    """Slack's Web API and Socket Mode on 127.0.0.1."""

    def __init__(
        self, *, streaming: bool = False, customize: bool = True, stream_expires_after: int = 0
    ) -> None:
        self.streaming = streaming
        self.customize = customize
        # When set, a stream stops taking text after this many appends (as if it expired).
        self.stream_expires_after = stream_expires_after
        # Channels the bot is not a member of: posting there fails with not_in_channel.
        self.outside: set[str] = set()
        # Private channels and group DMs ("G..." ids are group DMs) and their members.
        self.private: dict[str, list[str]] = {}
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], Message] = {}
        self.ephemeral: list[dict[str, Any]] = []
        self.reactions: list[tuple[str, str, str]] = []
        self.views: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self.envelopes: dict[str, Envelope] = {}
        self.connections = 0
        self.url = ""
        self._limited: dict[str, list[float]] = {}
        self._ws: web.WebSocketResponse | None = None
        # Every open Socket Mode connection, oldest first (Slack allows several per app).
        self.sockets: list[web.WebSocketResponse] = []
        self._connected = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Condition()

    # ---- server ----

    async def start(self) -> None:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_get("/link/", self._socket)
        app.router.add_post("/commands/{id}", self._response_url)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        for ws in list(self.sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    def rate_limit(self, method: str, times: int, retry_after_s: float = 1.0) -> None:
        """Answer the next `times` calls of `method` with 429 and Retry-After."""
        self._limited[method] = [retry_after_s] * times

    def new_ts(self) -> str:
        return f"{int(time.time())}.{next(_TS_COUNTER):06d}"

    # ---- Web API ----

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            args.update(await request.json())
        elif request.can_read_body:
            args.update(await request.post())
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        token = bearer or args.get("token")
        self.calls.append(Call(method, args, time.perf_counter()))
        waits = self._limited.get(method)
        if waits:
            wait = waits.pop(0)
            limited = {"ok": False, "error": "ratelimited"}
            return web.json_response(limited, status=429, headers={"Retry-After": str(int(wait))})
        wanted = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != wanted:
            return self._reply({"ok": False, "error": "invalid_auth"})
        handler = getattr(self, "m_" + method.replace(".", "_"), None)
        if handler is None:
            return self._reply({"ok": False, "error": "unknown_method"})
        result = handler(args)
        async with self._changed:
            self._changed.notify_all()
        return self._reply(result)

    @staticmethod
    def _reply(body: dict[str, Any]) -> web.Response:
        return web.json_response(body, headers={"X-OAuth-Scopes": SCOPES})

    def m_auth_test(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://fake.slack.com/",
            "team": "Fake",
            "user": "bots",
            "team_id": TEAM,
            "user_id": BOT_USER,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def m_apps_connections_open(self, _args: dict[str, Any]) -> dict[str, Any]:
        ticket = uuid.uuid4().hex
        return {"ok": True, "url": f"ws://{self.url.removeprefix('http://')}/link/?ticket={ticket}"}

    def m_chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("channel") in self.outside:
            return {"ok": False, "error": "not_in_channel"}
        problem = self._identity_problem(args) or self._text_problem(args)
        if problem:
            return problem
        message = Message(
            channel=args["channel"],
            ts=self.new_ts(),
            text=args.get("text", ""),
            bot_id=BOT_ID,
            thread_ts=args.get("thread_ts", ""),
            username=args.get("username", ""),
            icon_url=args.get("icon_url", ""),
            blocks=_blocks(args),
        )
        self.messages[(message.channel, message.ts)] = message
        return {
            "ok": True,
            "channel": message.channel,
            "ts": message.ts,
            "message": message.as_api(),
        }

    def m_chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get((args.get("channel", ""), args.get("ts", "")))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if message.bot_id != BOT_ID:
            return {"ok": False, "error": "cant_update_message"}
        problem = self._text_problem(args)
        if problem:
            return problem
        message.text = args.get("text", message.text)
        if "blocks" in args:
            message.blocks = _blocks(args)
        message.edits += 1
        return {"ok": True, "channel": message.channel, "ts": message.ts, "text": message.text}

    def m_chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        self.ephemeral.append(args)
        return {"ok": True, "message_ts": self.new_ts()}

    def m_chat_startStream(self, args: dict[str, Any]) -> dict[str, Any]:
        if not self.streaming:
            return {"ok": False, "error": "unknown_method"}
        channel = args.get("channel", "")
        if not args.get("thread_ts"):
            return {"ok": False, "error": "invalid_arguments"}
        if not channel.startswith("D") and not (
            args.get("recipient_user_id") and args.get("recipient_team_id")
        ):
            return {"ok": False, "error": "invalid_arguments"}
        problem = self._identity_problem(args)
        if problem:
            return problem
        message = Message(
            channel=channel,
            ts=self.new_ts(),
            text=_chunk_text(args),
            bot_id=BOT_ID,
            thread_ts=args["thread_ts"],
            username=args.get("username", ""),
            icon_url=args.get("icon_url", ""),
            stream="in_progress",
        )
        self.messages[(channel, message.ts)] = message
        return {"ok": True, "channel": channel, "ts": message.ts}

    def m_chat_appendStream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get((args.get("channel", ""), args.get("ts", "")))
        if message is None or message.stream != "in_progress":
            return {"ok": False, "error": "message_not_in_streaming_state"}
        if self.stream_expires_after and message.edits >= self.stream_expires_after:
            message.stream = "completed"
            return {"ok": False, "error": "message_not_in_streaming_state"}
        message.text += _chunk_text(args)
        message.edits += 1
        return {"ok": True, "channel": message.channel, "ts": message.ts}

    def m_chat_stopStream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get((args.get("channel", ""), args.get("ts", "")))
        if message is None or message.stream != "in_progress":
            return {"ok": False, "error": "message_not_in_streaming_state"}
        message.text += _chunk_text(args)
        message.blocks = _blocks(args)
        message.stream = "completed"
        return {
            "ok": True,
            "channel": message.channel,
            "ts": message.ts,
            "message": message.as_api(),
        }

    def m_conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, root = args.get("channel", ""), args.get("ts", "")
        thread = sorted(
            (
                m
                for m in self.messages.values()
                if m.channel == channel and (m.ts == root or m.thread_ts == root)
            ),
            key=lambda m: float(m.ts),
        )
        if not thread:
            return {"ok": False, "error": "thread_not_found"}
        return {"ok": True, "messages": [m.as_api() for m in thread], "has_more": False}

    def m_conversations_info(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = str(args.get("channel", ""))
        private = channel in self.private
        mpim = private and channel.startswith("G")
        return {
            "ok": True,
            "channel": {
                "id": channel,
                "is_channel": not private and not channel.startswith("D"),
                "is_group": private and not mpim,
                "is_im": channel.startswith("D"),
                "is_mpim": mpim,
                "is_private": private or channel.startswith("D"),
            },
        }

    def m_conversations_members(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = str(args.get("channel", ""))
        if channel not in self.private:
            return {"ok": False, "error": "channel_not_found"}
        members = [*self.private[channel], BOT_USER]
        return {"ok": True, "members": members, "response_metadata": {"next_cursor": ""}}

    def m_reactions_add(self, args: dict[str, Any]) -> dict[str, Any]:
        self.reactions.append((args["channel"], args["timestamp"], args["name"]))
        return {"ok": True}

    def m_views_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        view = args.get("view")
        view = json.loads(view) if isinstance(view, str) else view
        self.views.append({"user_id": args.get("user_id"), "view": view})
        return {"ok": True, "view": {"id": "V0VIEW001", **(view or {})}}

    def _identity_problem(self, args: dict[str, Any]) -> dict[str, Any] | None:
        if not self.customize and (args.get("username") or args.get("icon_url")):
            return {
                "ok": False,
                "error": "missing_scope",
                "needed": "chat:write.customize",
                "provided": SCOPES.replace(",chat:write.customize", ""),
            }
        return None

    @staticmethod
    def _text_problem(args: dict[str, Any]) -> dict[str, Any] | None:
        if not args.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        if not args.get("text") and not args.get("blocks"):
            return {"ok": False, "error": "no_text"}
        if len(args.get("text", "")) > MAX_TEXT:
            return {"ok": False, "error": "msg_too_long"}
        return None

    async def _response_url(self, request: web.Request) -> web.Response:
        self.responses.append(await request.json())
        async with self._changed:
            self._changed.notify_all()
        return web.Response(text="ok")

    # ---- what tests look at ----

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def bot_messages(self, channel: str = "", thread_ts: str = "") -> list[Message]:
        """The bot's messages, oldest first (optionally in one channel/thread)."""
        return sorted(
            (
                m
                for m in self.messages.values()
                if m.bot_id == BOT_ID
                and (not channel or m.channel == channel)
                and (not thread_ts or m.thread_ts == thread_ts)
            ),
            key=lambda m: float(m.ts),
        )

    async def wait_for(self, check: Any, timeout: float = 60.0) -> Any:
        """Wait until `check()` is truthy (re-checked whenever the fake is called)."""

        async def until() -> Any:
            async with self._changed:
                while not (result := check()):
                    await self._changed.wait()
                return result

        return await asyncio.wait_for(until(), timeout)

    # ---- people writing ----

    def user_message(
        self,
        text: str,
        *,
        channel: str = CHANNEL,
        user: str = USER,
        thread_ts: str = "",
        mention: bool = False,
        **extra: Any,
    ) -> dict[str, Any]:
        """A person posts `text`: stored like Slack does, returned as the event Slack sends."""
        ts = self.new_ts()
        if mention:
            text = f"<@{BOT_USER}> {text}"
        self.messages[(channel, ts)] = Message(channel, ts, text, user=user, thread_ts=thread_ts)
        event: dict[str, Any] = {
            "client_msg_id": str(uuid.uuid4()),
            "type": "app_mention" if mention else "message",
            "text": text,
            "user": user,
            "ts": ts,
            "team": TEAM,
            "blocks": [_rich_text(text)],
            "channel": channel,
            "event_ts": ts,
        }
        if not mention:
            event["channel_type"] = "im" if channel.startswith("D") else "channel"
        if thread_ts:
            event["thread_ts"] = thread_ts
            event["parent_user_id"] = USER
        event.update(extra)
        return event

    @staticmethod
    def twin(event: dict[str, Any]) -> dict[str, Any]:
        """The `message` event Slack also sends for a channel post that mentions the app."""
        twin = {k: v for k, v in event.items() if k != "type"}
        return {"type": "message", **twin, "channel_type": "channel"}

    @staticmethod
    def envelope_body(event: Any, event_id: str = "") -> dict[str, Any]:
        """The Events API envelope around an event, as Slack posts it."""
        return {
            "token": "verification-token",
            "team_id": TEAM,
            "api_app_id": APP_ID,
            "event": event,
            "type": "event_callback",
            "event_id": event_id or "Ev" + uuid.uuid4().hex[:10].upper(),
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": TEAM,
                    "user_id": BOT_USER,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": "4-" + uuid.uuid4().hex,
        }

    def command(
        self, command: str, text: str, *, channel: str = CHANNEL, user: str = USER
    ) -> dict[str, str]:
        """A slash command's fields, as Slack posts them."""
        return {
            "token": "verification-token",
            "team_id": TEAM,
            "team_domain": "fake",
            "channel_id": channel,
            "channel_name": "general",
            "user_id": user,
            "user_name": "ada",
            "command": command,
            "text": text,
            "api_app_id": APP_ID,
            "is_enterprise_install": "false",
            "response_url": f"{self.url}/commands/{uuid.uuid4().hex}",
            "trigger_id": "13345224609.738474920.8088930838d88f008e0",
        }

    # ---- HTTP Events mode: Slack posting to the app's request URL ----

    @staticmethod
    async def post_signed(
        url: str,
        body: str,
        *,
        content_type: str = "application/json",
        secret: str = SIGNING_SECRET,
        timestamp: int | None = None,
        signature: str | None = None,
        retry_num: int = 0,
    ) -> tuple[int, str, float]:
        """POST like Slack: signed body; returns (status, text, seconds to the response)."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        headers = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature
            or SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body),
        }
        if retry_num:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        started = time.perf_counter()
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=body.encode(), headers=headers) as response,
        ):
            text = await response.text()
            return response.status, text, time.perf_counter() - started

    @classmethod
    async def post_event(
        cls, url: str, event: Any, *, event_id: str = "", **kwargs: Any
    ) -> tuple[int, str, float]:
        """Deliver `event` in its Events API envelope to the app's request URL."""
        return await cls.post_signed(url, json.dumps(cls.envelope_body(event, event_id)), **kwargs)

    @classmethod
    async def post_command(
        cls, url: str, fields: dict[str, str], **kwargs: Any
    ) -> tuple[int, str, float]:
        """Deliver a slash command, form-encoded, to the app's request URL."""
        return await cls.post_signed(
            url, urlencode(fields), content_type="application/x-www-form-urlencoded", **kwargs
        )

    # ---- Socket Mode ----

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._ws = ws
        self.sockets.append(ws)
        self.connections += 1
        async with self._changed:
            self._changed.notify_all()
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": len(self.sockets),
                    "debug_info": {"host": "applink-fake", "approximate_connection_time": 18060},
                    "connection_info": {"app_id": APP_ID},
                }
            )
        )
        self._connected.set()
        # Slack redelivers what was never acknowledged, counting the attempts.
        for envelope in list(self.envelopes.values()):
            if not envelope.acked.is_set():
                envelope.retry_attempt += 1
                await ws.send_str(envelope.frame())
        async for frame in ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(frame.data)
            envelope = self.envelopes.get(data.get("envelope_id", ""))
            if envelope is not None and not envelope.acked.is_set():
                envelope.ack_payload = data.get("payload")
                envelope.acked_at = time.perf_counter()
                envelope.acked.set()
        self.sockets.remove(ws)
        if self._ws is ws:
            self._ws = self.sockets[-1] if self.sockets else None
            if self._ws is None:
                self._connected.clear()
        return ws

    async def connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def deliver(
        self,
        payload: dict[str, Any],
        kind: str = "events_api",
        *,
        retry_of: str = "",
        to: int | None = None,
    ) -> Envelope:
        """Push an envelope over the latest connection, or over `sockets[to]` (kept for
        redelivery until acked)."""
        if retry_of:
            previous = self.envelopes[retry_of]
            envelope = Envelope(previous.envelope_id, kind, payload, previous.retry_attempt + 1)
        else:
            envelope = Envelope(str(uuid.uuid4()), kind, payload)
        self.envelopes[envelope.envelope_id] = envelope
        envelope.sent_at = time.perf_counter()
        ws = self.sockets[to] if to is not None else self._ws
        if ws is not None:
            await ws.send_str(envelope.frame())
        return envelope

    async def deliver_event(self, event: Any, event_id: str = "") -> Envelope:
        return await self.deliver(self.envelope_body(event, event_id))

    async def ask_to_reconnect(self) -> None:
        """Slack's `disconnect` message: the client must open a new connection."""
        if self._ws is not None:
            await self._ws.send_str(
                json.dumps(
                    {
                        "type": "disconnect",
                        "reason": "refresh_requested",
                        "debug_info": {"host": "applink-fake"},
                    }
                )
            )

    async def drop(self) -> None:
        """Cut the current connection without warning."""
        ws, self._ws = self._ws, None
        self._connected.clear()
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()


def _blocks(args: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = args.get("blocks") or []
    return json.loads(blocks) if isinstance(blocks, str) else list(blocks)


def _chunk_text(args: dict[str, Any]) -> str:
    chunks = args.get("chunks") or []
    chunks = json.loads(chunks) if isinstance(chunks, str) else chunks
    text = "".join(c.get("text", "") for c in chunks if c.get("type") == "markdown_text")
    return text + (args.get("markdown_text") or "")


def _rich_text(text: str) -> dict[str, Any]:
    return {
        "type": "rich_text",
        "block_id": uuid.uuid4().hex[:4],
        "elements": [{"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}],
    }
