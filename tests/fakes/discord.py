"""A loopback fake of Discord: the REST API and the gateway, on 127.0.0.1, for offline tests.

The bot under test is the real discord.py client pointed here (`DISCORD_API_URL`,
`DISCORD_GATEWAY_URL`). The fake keeps a small world (one guild with roles, members and text
channels; DMs; threads; webhooks; interactions), speaks the documented payload shapes
(https://discord.com/developers/docs: message, channel, guild, interaction and gateway objects),
and records every REST call so tests assert on what the bot really sent.

Gateway: HELLO, heartbeats acknowledged, IDENTIFY -> READY + GUILD_CREATE, RESUME -> missed events
replayed + RESUMED, dispatches `{"op": 0, "t": EVENT, "s": seq, "d": data}`. A bot that does
not request the message-content intent gets content blanked as Discord does (except DMs,
mentions of the bot and its own messages); one that requests it without it being enabled
(`content_intent_granted=False`) is disconnected with close code 4014.

Faults on demand: 429 with `Retry-After` (and `Via`, without which discord.py assumes a
Cloudflare ban), 5xx, dropped REST connections (before or after the work is done), dropped
gateway connections, and replays of already-delivered events on RESUME.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

DISCORD_EPOCH_MS = 1_420_070_400_000
MESSAGE_LIMIT = 2000
MESSAGE_CONTENT_INTENT = 1 << 15
HEARTBEAT_INTERVAL_MS = 41_250
EVENT_BUFFER = 1000

# Permission bits (https://discord.com/developers/docs/topics/permissions).
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
USE_APPLICATION_COMMANDS = 1 << 31
MANAGE_WEBHOOKS = 1 << 29
CREATE_PUBLIC_THREADS = 1 << 35
SEND_MESSAGES_IN_THREADS = 1 << 38
EVERYONE_PERMISSIONS = (
    ADD_REACTIONS
    | VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | USE_APPLICATION_COMMANDS
    | CREATE_PUBLIC_THREADS
    | SEND_MESSAGES_IN_THREADS
)

JSON_TYPE = "application/json"
CALL = web.RequestKey("call", "Call")
CUT = 0  # a fault status meaning "drop the connection"
CUT_STATUS = 599  # what the call log records for a dropped connection


def timestamp(at: float | None = None) -> str:
    """ISO 8601 as Discord writes it."""
    t = time.time() if at is None else at
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}+00:00"


class Snowflakes:
    """Real-shaped snowflakes: milliseconds since the Discord epoch, then a counter."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def next(self) -> str:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return str((ms << 22) | (next(self._counter) & 0xFFF))


@dataclass
class Call:
    """One REST request the bot made, as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int
    bot: str
    at: float = field(default_factory=time.monotonic)

    @property
    def content(self) -> str | None:
        """The message text this call carried (top level or interaction callback data)."""
        if not isinstance(self.body, dict):
            return None
        if isinstance(self.body.get("content"), str):
            return str(self.body["content"])
        data = self.body.get("data")
        if isinstance(data, dict) and isinstance(data.get("content"), str):
            return str(data["content"])
        return None

    @property
    def allowed_mentions(self) -> Any:
        if not isinstance(self.body, dict):
            return None
        if "allowed_mentions" in self.body:
            return self.body["allowed_mentions"]
        data = self.body.get("data")
        return data.get("allowed_mentions") if isinstance(data, dict) else None


@dataclass
class Fault:
    """Answer the next `times` matching requests with `status` instead of serving them, or
    (status 0) cut the connection, before or after doing the work."""

    method: str
    pattern: re.Pattern[str]
    status: int
    times: int
    retry_after: float = 0.0
    via: bool = True
    after_processing: bool = False
    # A spent bucket: every matching request until this time (monotonic) gets a 429.
    until: float | None = None
    is_global: bool = False

    def retry_after_s(self) -> float:
        if self.until is None:
            return self.retry_after
        return max(0.0, self.until - time.monotonic())


@dataclass
class Session:
    """A gateway session: its sequence, the events dispatched in it (for RESUME), its socket."""

    id: str
    intents: int
    seq: int = 0
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    ws: web.WebSocketResponse | None = None
    outbox: asyncio.Queue[dict[str, Any]] | None = None


@dataclass
class BotAccount:
    """One bot user (one token) and its application."""

    token: str
    user: dict[str, Any]
    application: dict[str, Any]
    role_id: str
    session: Session | None = None
    commands: list[dict[str, Any]] = field(default_factory=list)
    identifies: int = 0
    # The [shard id, shard count] of each IDENTIFY, in order.
    shards: list[tuple[int, ...]] = field(default_factory=list)
    resumes: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def id(self) -> str:
        return str(self.user["id"])


class FakeDiscord:
    """The fake Discord. `await start()`, point the client at `api_url`/`gateway_url`."""

    def __init__(
        self, *, manage_webhooks: bool = True, content_intent_granted: bool = True
    ) -> None:
        self.ids = Snowflakes()
        self.manage_webhooks = manage_webhooks
        self.content_intent_granted = content_intent_granted
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self.bots: dict[str, BotAccount] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.member_roles: dict[str, list[str]] = {}
        self.channels: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        self.webhooks: dict[str, dict[str, Any]] = {}
        self.interactions: dict[str, dict[str, Any]] = {}
        self.attachments: dict[str, bytes] = {}
        self.replay_from: int | None = None
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.guild_id = self.ids.next()
        self.roles: dict[str, dict[str, Any]] = {}
        self._add_role(self.guild_id, "@everyone", EVERYONE_PERMISSIONS, position=0)
        self.owner = self.add_user("owner")

    # ----------------------------------------------------------------- the world

    def _add_role(
        self,
        role_id: str,
        name: str,
        permissions: int,
        *,
        position: int,
        tags: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        role: dict[str, Any] = {
            "id": role_id,
            "name": name,
            "color": 0,
            "colors": {"primary_color": 0},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": position,
            "permissions": str(permissions),
            "managed": tags is not None,
            "mentionable": False,
            "flags": 0,
        }
        if tags is not None:
            role["tags"] = tags
        self.roles[role_id] = role
        return role

    def add_role(self, name: str) -> str:
        """A plain guild role; returns its id."""
        return str(self._add_role(self.ids.next(), name, 0, position=len(self.roles))["id"])

    def add_user(
        self, username: str, *, roles: Iterable[str] = (), bot: bool = False
    ) -> dict[str, Any]:
        """A guild member (user object returned); `roles` are role ids."""
        user: dict[str, Any] = {
            "id": self.ids.next(),
            "username": username,
            "global_name": username.title(),
            "discriminator": "0",
            "avatar": None,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
        }
        if bot:
            user["bot"] = True
        self.users[user["id"]] = user
        self.member_roles[user["id"]] = list(roles)
        return user

    def add_bot(self, token: str, username: str = "bots") -> BotAccount:
        """A bot account the client can log in with; it is a member of the guild."""
        user = self.add_user(username, bot=True)
        app_id = user["id"]  # Discord gives bots created today the application's id
        role = self._add_role(
            self.ids.next(),
            username,
            EVERYONE_PERMISSIONS | (MANAGE_WEBHOOKS if self.manage_webhooks else 0),
            position=len(self.roles),
            tags={"bot_id": user["id"]},
        )
        self.member_roles[user["id"]] = [role["id"]]
        application = {
            "id": app_id,
            "name": username,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": uuid.uuid4().hex * 2,
            "flags": 1 << 19 | 1 << 23,  # content + members intents
            "owner": self.owner,
            "team": None,
            "rpc_origins": [],
            "tags": [],
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "integration_types_config": {"0": {}},
        }
        account = BotAccount(token, user, application, str(role["id"]))
        self.bots[token] = account
        return account

    def add_channel(self, name: str, *, parent: str | None = None) -> str:
        """A guild text channel; announced with CHANNEL_CREATE if bots are connected."""
        channel: dict[str, Any] = {
            "id": self.ids.next(),
            "type": 0,
            "guild_id": self.guild_id,
            "name": name,
            "position": len(self.channels),
            "permission_overwrites": [],
            "parent_id": parent,
            "topic": None,
            "nsfw": False,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }
        self.channels[channel["id"]] = channel
        self._broadcast("CHANNEL_CREATE", channel)
        return str(channel["id"])

    def dm_channel(self, user: dict[str, Any], bot: BotAccount) -> str:
        """The DM channel between a user and a bot (created on first use)."""
        for channel in self.channels.values():
            if (
                channel["type"] == 1
                and {r["id"] for r in channel["recipients"]} == {user["id"]}
                and channel.get("_bot") == bot.id
            ):
                return str(channel["id"])
        channel = {
            "id": self.ids.next(),
            "type": 1,
            "last_message_id": None,
            "flags": 0,
            "recipients": [user],
            "_bot": bot.id,
        }
        self.channels[channel["id"]] = channel
        return str(channel["id"])

    def member(self, user: dict[str, Any], *, with_user: bool = True) -> dict[str, Any]:
        """A guild member object (partial when embedded in a message)."""
        data: dict[str, Any] = {
            "roles": list(self.member_roles.get(user["id"], [])),
            "nick": None,
            "avatar": None,
            "banner": None,
            "premium_since": None,
            "joined_at": timestamp(0),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = user
        return data

    def guild_payload(self) -> dict[str, Any]:
        """GUILD_CREATE data: the guild with roles, members, channels and threads."""
        channels = [
            _public(c) for c in self.channels.values() if c.get("guild_id") and c["type"] == 0
        ]
        threads = [_public(c) for c in self.channels.values() if c["type"] == 11]
        return {
            "id": self.guild_id,
            "name": "Test Guild",
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": self.owner["id"],
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 1,
            "explicit_content_filter": 0,
            "roles": list(self.roles.values()),
            "emojis": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "max_members": 500000,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "stickers": [],
            "premium_progress_bar_enabled": False,
            "safety_alerts_channel_id": None,
            "joined_at": timestamp(0),
            "large": False,
            "unavailable": False,
            "member_count": len(self.users),
            "voice_states": [],
            "members": [self.member(u) for u in self.users.values()],
            "channels": channels,
            "threads": threads,
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        app = web.Application(
            middlewares=[self._record_middleware], client_max_size=8 * 1024 * 1024
        )
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{name}", self._attachment)
        api = "/api/v10"
        routes = [
            ("GET", "/users/@me", self._me),
            ("GET", "/oauth2/applications/@me", self._application),
            ("GET", "/gateway", self._gateway_url),
            ("GET", "/gateway/bot", self._gateway_url),
            ("PUT", "/applications/{app}/commands", self._sync_commands),
            ("GET", "/applications/{app}/commands", self._list_commands),
            ("POST", "/channels/{channel}/messages", self._create_message),
            ("GET", "/channels/{channel}/messages/{message}", self._get_message),
            ("PATCH", "/channels/{channel}/messages/{message}", self._edit_message),
            ("DELETE", "/channels/{channel}/messages/{message}", self._delete_message),
            ("POST", "/channels/{channel}/typing", self._typing),
            ("POST", "/channels/{channel}/messages/{message}/threads", self._create_thread),
            ("GET", "/channels/{channel}/webhooks", self._list_webhooks),
            ("POST", "/channels/{channel}/webhooks", self._create_webhook),
            ("PATCH", "/webhooks/{webhook}", self._edit_webhook),
            ("POST", "/webhooks/{webhook}/{token}", self._execute_webhook),
            ("GET", "/webhooks/{webhook}/{token}/messages/{message}", self._get_webhook_message),
            ("PATCH", "/webhooks/{webhook}/{token}/messages/{message}", self._edit_webhook_message),
            (
                "DELETE",
                "/webhooks/{webhook}/{token}/messages/{message}",
                self._delete_webhook_message,
            ),
            ("POST", "/interactions/{interaction}/{token}/callback", self._interaction_callback),
            ("POST", "/users/@me/channels", self._open_dm),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, api + path, handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        for bot in self.bots.values():
            if bot.session and bot.session.ws is not None:
                await bot.session.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # ----------------------------------------------------------------- REST plumbing

    @web.middleware
    async def _record_middleware(
        self, request: web.Request, handler: Callable[..., Any]
    ) -> web.StreamResponse:
        if request.path == "/gateway":
            return await handler(request)  # type: ignore[no-any-return]
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            if request.content_type == JSON_TYPE:
                body = json.loads(raw)
            elif request.content_type.startswith("multipart/"):
                body = {"multipart": True}
            else:
                body = raw.decode("utf-8", "replace")
        token = request.headers.get("Authorization", "").removeprefix("Bot ")
        call = Call(
            request.method,
            request.path.removeprefix("/api/v10"),
            dict(request.query),
            body,
            0,
            self.bots[token].id if token in self.bots else "",
        )
        request[CALL] = call
        response: web.StreamResponse
        fault = self._take_fault(request.method, call.path)
        if fault is not None and not fault.after_processing:
            response = self._fault_response(request, fault)
        elif (
            request.path.startswith("/api/")
            and _needs_bot_auth(call.path)
            and token not in self.bots
        ):
            response = _json({"message": "401: Unauthorized", "code": 0}, status=401)
        else:
            try:
                response = await handler(request)
            except ApiError as exc:
                response = _json(exc.body, status=exc.status)
            if fault is not None:  # the work is done, but the answer is lost
                response = self._fault_response(request, fault)
        call.status = response.status
        self.calls.append(call)
        async with self._changed:
            self._changed.notify_all()
        return response

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if not (fault.method == method and fault.pattern.search(path)):
                continue
            if fault.until is not None:
                if time.monotonic() < fault.until:
                    return fault
            elif fault.times > 0:
                fault.times -= 1
                return fault
        return None

    @staticmethod
    def _fault_response(request: web.Request, fault: Fault) -> web.Response:
        if fault.status == CUT:
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=CUT_STATUS)  # never sent: the connection is gone
        if fault.status == 429:
            retry_after = fault.retry_after_s()
            headers = {
                "Retry-After": f"{retry_after:.3f}",
                "X-RateLimit-Scope": "global" if fault.is_global else "user",
            }
            if fault.is_global:
                headers["X-RateLimit-Global"] = "true"
            if fault.via:
                headers["Via"] = "1.1 google"  # without it discord.py assumes a Cloudflare ban
            body = {
                "message": "You are being rate limited.",
                "retry_after": retry_after,
                "global": fault.is_global,
            }
            return _json(body, status=429, headers=headers)
        return _json({"message": "Service unavailable", "code": 0}, status=fault.status)

    def fail(
        self,
        method: str,
        path_pattern: str,
        status: int,
        *,
        times: int = 1,
        retry_after: float = 0.0,
        via: bool = True,
    ) -> Fault:
        """Answer the next `times` matching requests with an error (429 carries Retry-After)."""
        fault = Fault(method, re.compile(path_pattern), status, times, retry_after, via)
        self.faults.append(fault)
        return fault

    def spend(
        self, method: str, path_pattern: str, seconds: float, *, is_global: bool = False
    ) -> Fault:
        """A spent bucket (or, `is_global`, the bot's global limit): every matching request in
        the next `seconds` is answered 429 with the time left as `Retry-After`."""
        fault = Fault(
            method,
            re.compile(path_pattern),
            429,
            0,
            until=time.monotonic() + seconds,
            is_global=is_global,
        )
        self.faults.append(fault)
        return fault

    def cut(
        self, method: str, path_pattern: str, *, times: int = 1, after_processing: bool = False
    ) -> Fault:
        """Drop the connection on the next `times` matching requests (an outage); with
        `after_processing` the request takes effect but its response is lost."""
        fault = Fault(
            method, re.compile(path_pattern), CUT, times, after_processing=after_processing
        )
        self.faults.append(fault)
        return fault

    def _bot_of(self, request: web.Request) -> BotAccount:
        token = request.headers.get("Authorization", "").removeprefix("Bot ")
        return self.bots[token]

    # ----------------------------------------------------------------- REST: identity

    async def _me(self, request: web.Request) -> web.Response:
        return _json(self._bot_of(request).user)

    async def _application(self, request: web.Request) -> web.Response:
        return _json(self._bot_of(request).application)

    async def _gateway_url(self, request: web.Request) -> web.Response:
        return _json(
            {
                "url": self.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 14400000,
                    "max_concurrency": 1,
                },
            }
        )

    async def _sync_commands(self, request: web.Request) -> web.Response:
        bot = self._bot_of(request)
        body = request[CALL].body
        bot.commands = []
        for command in body:
            bot.commands.append(
                {
                    **command,
                    "id": self.ids.next(),
                    "application_id": bot.application["id"],
                    "version": self.ids.next(),
                    "default_member_permissions": None,
                    "type": command.get("type", 1),
                    "nsfw": command.get("nsfw", False),
                }
            )
        return _json(bot.commands)

    async def _list_commands(self, request: web.Request) -> web.Response:
        return _json(self._bot_of(request).commands)

    async def _open_dm(self, request: web.Request) -> web.Response:
        bot = self._bot_of(request)
        user = self.users[str(request[CALL].body["recipient_id"])]
        return _json(_public(self.channels[self.dm_channel(user, bot)]))

    async def _attachment(self, request: web.Request) -> web.Response:
        data = self.attachments.get(request.match_info["name"])
        if data is None:
            raise _error(404, 0, "404: Not Found")
        return web.Response(body=data, content_type="text/plain")

    # ----------------------------------------------------------------- REST: messages

    def _channel(self, channel_id: str) -> dict[str, Any]:
        channel = self.channels.get(channel_id)
        if channel is None:
            raise _error(404, 10003, "Unknown Channel")
        return channel

    def _check_content(self, body: dict[str, Any]) -> None:
        content = body.get("content")
        if isinstance(content, str) and len(content) > MESSAGE_LIMIT:
            raise _error(
                400,
                50035,
                "Invalid Form Body",
                {
                    "content": {
                        "_errors": [
                            {
                                "code": "BASE_TYPE_MAX_LENGTH",
                                "message": f"Must be {MESSAGE_LIMIT} or fewer in length.",
                            }
                        ]
                    }
                },
            )

    async def _create_message(self, request: web.Request) -> web.Response:
        bot = self._bot_of(request)
        channel = self._channel(request.match_info["channel"])
        body = request[CALL].body
        self._check_content(body)
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce"):
            for earlier in self.messages.values():
                if earlier.get("nonce") == nonce and earlier["author"]["id"] == bot.id:
                    return _json(earlier)  # Discord's de-duplication of retried sends
        reference = None
        if body.get("message_reference"):
            reference = self.messages.get(str(body["message_reference"]["message_id"]))
        message = self._new_message(
            channel, bot.user, body.get("content", ""), reference=reference, nonce=nonce
        )
        message["embeds"] = body.get("embeds", [])
        self._store_and_announce(message)
        return _json(message)

    async def _get_message(self, request: web.Request) -> web.Response:
        message = self.messages.get(request.match_info["message"])
        if message is None or message["channel_id"] != request.match_info["channel"]:
            raise _error(404, 10008, "Unknown Message")
        return _json(self._visible(message, self._bot_of(request)))

    async def _edit_message(self, request: web.Request) -> web.Response:
        message = self.messages.get(request.match_info["message"])
        if message is None:
            raise _error(404, 10008, "Unknown Message")
        if message["author"]["id"] != self._bot_of(request).id:
            raise _error(403, 50005, "Cannot edit a message authored by another user")
        return _json(self._apply_edit(message, request[CALL].body))

    async def _delete_message(self, request: web.Request) -> web.Response:
        message = self.messages.pop(request.match_info["message"], None)
        if message is None:
            raise _error(404, 10008, "Unknown Message")
        self._broadcast(
            "MESSAGE_DELETE",
            _delete_event(message, self.channels[message["channel_id"]].get("guild_id")),
        )
        return web.Response(status=204)

    async def _typing(self, request: web.Request) -> web.Response:
        self._channel(request.match_info["channel"])
        return web.Response(status=204)

    def _apply_edit(self, message: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        self._check_content(body)
        if "content" in body:
            message["content"] = body["content"] or ""
        if "embeds" in body:
            message["embeds"] = body["embeds"] or []
        message["edited_timestamp"] = timestamp()
        self._broadcast("MESSAGE_UPDATE", self._with_guild(message))
        return message

    async def _create_thread(self, request: web.Request) -> web.Response:
        bot = self._bot_of(request)
        parent = self._channel(request.match_info["channel"])
        starter = self.messages.get(request.match_info["message"])
        if starter is None:
            raise _error(404, 10008, "Unknown Message")
        body = request[CALL].body
        thread = {
            "id": starter["id"],
            "type": 11,
            "guild_id": self.guild_id,
            "parent_id": parent["id"],
            "owner_id": bot.id,
            "name": body["name"],
            "last_message_id": None,
            "message_count": 0,
            "member_count": 1,
            "total_message_sent": 0,
            "rate_limit_per_user": 0,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": body.get("auto_archive_duration", 1440),
                "archive_timestamp": timestamp(),
                "locked": False,
                "create_timestamp": timestamp(),
            },
        }
        self.channels[thread["id"]] = thread
        starter["thread"] = _public(thread)
        self._broadcast("THREAD_CREATE", {**_public(thread), "newly_created": True})
        return _json(_public(thread), status=201)

    # ----------------------------------------------------------------- REST: webhooks

    async def _list_webhooks(self, request: web.Request) -> web.Response:
        self._channel(request.match_info["channel"])
        if not self.manage_webhooks:
            raise _error(403, 50013, "Missing Permissions")
        channel_id = request.match_info["channel"]
        return _json([w for w in self.webhooks.values() if w["channel_id"] == channel_id])

    async def _create_webhook(self, request: web.Request) -> web.Response:
        bot = self._bot_of(request)
        channel = self._channel(request.match_info["channel"])
        if not self.manage_webhooks:
            raise _error(403, 50013, "Missing Permissions")
        body = request[CALL].body
        if "discord" in body["name"].lower() or "clyde" in body["name"].lower():
            raise _error(400, 50035, "Invalid Form Body")
        webhook = {
            "id": self.ids.next(),
            "type": 1,
            "guild_id": self.guild_id,
            "channel_id": channel["id"],
            "name": body["name"],
            "avatar": uuid.uuid4().hex if body.get("avatar") else None,
            "token": uuid.uuid4().hex,
            "application_id": None,
            "user": bot.user,
        }
        self.webhooks[webhook["id"]] = webhook
        return _json(webhook)

    async def _edit_webhook(self, request: web.Request) -> web.Response:
        webhook = self.webhooks.get(request.match_info["webhook"])
        if webhook is None:
            raise _error(404, 10015, "Unknown Webhook")
        body = request[CALL].body
        if "name" in body:
            webhook["name"] = body["name"]
        if "avatar" in body:
            webhook["avatar"] = uuid.uuid4().hex if body["avatar"] else None
        return _json(webhook)

    def _webhook(self, request: web.Request) -> dict[str, Any]:
        webhook = self.webhooks.get(request.match_info["webhook"])
        if webhook is None or webhook["token"] != request.match_info["token"]:
            interaction = self._interaction_by_token(request.match_info["token"])
            if interaction is not None:
                return interaction
            raise _error(404, 10015, "Unknown Webhook")
        return webhook

    def _interaction_by_token(self, token: str) -> dict[str, Any] | None:
        for interaction in self.interactions.values():
            if interaction["token"] == token:
                return interaction
        return None

    async def _execute_webhook(self, request: web.Request) -> web.Response:
        hook = self._webhook(request)
        body = request[CALL].body
        self._check_content(body)
        if hook.get("_interaction"):  # an interaction follow-up
            bot = self.bots_by_id()[hook["application_id"]]
            channel = self._channel(hook["channel_id"])
            message = self._new_message(channel, bot.user, body.get("content", ""))
            message["application_id"] = hook["application_id"]
            message["webhook_id"] = hook["application_id"]
        else:
            channel_id = request.query.get("thread_id") or hook["channel_id"]
            channel = self._channel(channel_id)
            author = {
                "id": hook["id"],
                "username": body.get("username") or hook["name"],
                "avatar": hook["avatar"],
                "discriminator": "0000",
                "bot": True,
                "global_name": None,
                "public_flags": 0,
                "flags": 0,
            }
            message = self._new_message(channel, author, body.get("content", ""))
            message["webhook_id"] = hook["id"]
        message["embeds"] = body.get("embeds", [])
        if body.get("flags", 0) & 64:
            message["flags"] = 64
        self._store_and_announce(message)
        if request.query.get("wait") in ("true", "1", "True"):
            return _json(message)
        return web.Response(status=204)

    async def _get_webhook_message(self, request: web.Request) -> web.Response:
        hook = self._webhook(request)
        message = self._webhook_message(hook, request.match_info["message"])
        return _json(message)

    async def _edit_webhook_message(self, request: web.Request) -> web.Response:
        hook = self._webhook(request)
        message = self._webhook_message(hook, request.match_info["message"])
        return _json(self._apply_edit(message, request[CALL].body))

    async def _delete_webhook_message(self, request: web.Request) -> web.Response:
        hook = self._webhook(request)
        message = self._webhook_message(hook, request.match_info["message"])
        del self.messages[message["id"]]
        self._broadcast(
            "MESSAGE_DELETE",
            _delete_event(message, self.channels[message["channel_id"]].get("guild_id")),
        )
        return web.Response(status=204)

    def _webhook_message(self, hook: dict[str, Any], message_id: str) -> dict[str, Any]:
        if message_id == "@original":
            message_id = hook.get("_original", "")
        message = self.messages.get(message_id)
        if message is None or message.get("webhook_id") not in (
            hook.get("id"),
            hook.get("application_id"),
        ):
            raise _error(404, 10008, "Unknown Message")
        return message

    # ----------------------------------------------------------------- REST: interactions

    async def _interaction_callback(self, request: web.Request) -> web.Response:
        interaction = self.interactions.get(request.match_info["interaction"])
        if interaction is None or interaction["token"] != request.match_info["token"]:
            raise _error(404, 10062, "Unknown interaction")
        if interaction.get("_responded"):
            raise _error(400, 40060, "Interaction has already been acknowledged.")
        interaction["_responded"] = True
        body = request[CALL].body
        kind = body["type"]
        data = body.get("data") or {}
        self._check_content(data)
        bot = self.bots_by_id()[interaction["application_id"]]
        callback: dict[str, Any] = {"id": interaction["id"], "type": interaction["type"]}
        resource: dict[str, Any] = {"type": kind}
        if kind in (4, 5):
            channel = self._channel(interaction["channel_id"])
            content = data.get("content", "") if kind == 4 else ""
            message = self._new_message(channel, bot.user, content)
            message["webhook_id"] = interaction["application_id"]
            message["application_id"] = interaction["application_id"]
            message["interaction_metadata"] = {
                "id": interaction["id"],
                "type": 2,
                "user": interaction["_user"],
                "authorizing_integration_owners": {"0": self.guild_id},
                "name": interaction["data"]["name"],
            }
            message["flags"] = (data.get("flags", 0) & 64) | (128 if kind == 5 else 0)
            message["embeds"] = data.get("embeds", [])
            interaction["_original"] = message["id"]
            self._store_and_announce(message)
            callback.update(
                response_message_id=message["id"],
                response_message_loading=kind == 5,
                response_message_ephemeral=bool(message["flags"] & 64),
            )
            if kind == 4:
                resource["message"] = message
        return _json({"interaction": callback, "resource": resource})

    def bots_by_id(self) -> dict[str, BotAccount]:
        return {b.application["id"]: b for b in self.bots.values()}

    # ----------------------------------------------------------------- messages

    def _new_message(
        self,
        channel: dict[str, Any],
        author: dict[str, Any],
        content: str,
        *,
        reference: dict[str, Any] | None = None,
        nonce: Any = None,
        mentions: Iterable[dict[str, Any]] = (),
        attachments: Iterable[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "id": self.ids.next(),
            "channel_id": channel["id"],
            "author": author,
            "content": content,
            "timestamp": timestamp(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": list(mentions),
            "mention_roles": [],
            "attachments": list(attachments),
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
            "components": [],
        }
        if nonce is not None:
            message["nonce"] = nonce
        if reference is not None:
            message["type"] = 19
            message["message_reference"] = {
                "type": 0,
                "message_id": reference["id"],
                "channel_id": reference["channel_id"],
                **({"guild_id": self.guild_id} if channel.get("guild_id") else {}),
            }
            message["referenced_message"] = reference
        return message

    def as_event(self, message: dict[str, Any]) -> dict[str, Any]:
        """A message as MESSAGE_CREATE carries it (with `guild_id` and the author's `member`)."""
        return self._with_guild(message)

    def _with_guild(self, message: dict[str, Any]) -> dict[str, Any]:
        channel = self.channels.get(message["channel_id"], {})
        if not channel.get("guild_id"):
            return dict(message)
        data = {**message, "guild_id": self.guild_id}
        author = message["author"]
        if author["id"] in self.users and not message.get("webhook_id"):
            data["member"] = self.member(author, with_user=False)
        return data

    def _store_and_announce(self, message: dict[str, Any]) -> None:
        self.messages[message["id"]] = message
        channel = self.channels.get(message["channel_id"])
        if channel is not None:
            channel["last_message_id"] = message["id"]
        self._broadcast("MESSAGE_CREATE", self._with_guild(message))

    def _visible(self, message: dict[str, Any], bot: BotAccount) -> dict[str, Any]:
        """The message as this bot may see it (content blanked without the content intent)."""
        session = bot.session
        intents = session.intents if session else MESSAGE_CONTENT_INTENT
        has_content = intents & MESSAGE_CONTENT_INTENT
        channel = self.channels.get(message.get("channel_id", ""), {})
        if (
            has_content
            or channel.get("type") == 1
            or message.get("author", {}).get("id") == bot.id
            or any(m.get("id") == bot.id for m in message.get("mentions", []))
        ):
            return message
        return {**message, "content": "", "embeds": [], "attachments": [], "components": []}

    # ----------------------------------------------------------------- what users do

    def user_message(
        self,
        author: dict[str, Any],
        channel_id: str,
        content: str,
        *,
        mention: BotAccount | None = None,
        reply_to: str | None = None,
        attachments: Iterable[tuple[str, str, bytes]] = (),
    ) -> dict[str, Any]:
        """A user posts a message (MESSAGE_CREATE to every bot that can see it).

        `mention` puts `<@bot>` in front of the text; `reply_to` makes it a reply;
        `attachments` are (filename, content type, bytes), served by the fake's CDN.
        """
        message = self.message_payload(
            author, channel_id, content, mention=mention, reply_to=reply_to, attachments=attachments
        )
        self._store_and_announce(message)
        return message

    def message_payload(
        self,
        author: dict[str, Any],
        channel_id: str,
        content: str,
        *,
        mention: BotAccount | None = None,
        reply_to: str | None = None,
        attachments: Iterable[tuple[str, str, bytes]] = (),
    ) -> dict[str, Any]:
        """The message object `user_message` would post, without posting it."""
        channel = self._channel(channel_id)
        mentions: list[dict[str, Any]] = []
        if mention is not None:
            content = f"<@{mention.id}> {content}"
            mentions.append(
                {**mention.user, "member": self.member(mention.user, with_user=False)}
                if channel.get("guild_id")
                else mention.user
            )
        reference = self.messages[reply_to] if reply_to else None
        files = []
        for name, content_type, data in attachments:
            attachment_id = self.ids.next()
            key = f"{attachment_id}-{name}"
            self.attachments[key] = data
            url = f"http://127.0.0.1:{self.port}/attachments/{key}"
            files.append(
                {
                    "id": attachment_id,
                    "filename": name,
                    "size": len(data),
                    "url": url,
                    "proxy_url": url,
                    "content_type": content_type,
                }
            )
        message = self._new_message(
            channel,
            author,
            content,
            reference=reference,
            mentions=mentions,
            attachments=files,
            nonce=self.ids.next(),
        )
        return message

    def edit_user_message(self, message_id: str, content: str) -> None:
        """The author edits their message (MESSAGE_UPDATE)."""
        self._apply_edit(self.messages[message_id], {"content": content})

    def delete_user_message(self, message_id: str) -> None:
        """The author deletes their message (MESSAGE_DELETE)."""
        message = self.messages.pop(message_id)
        self._broadcast(
            "MESSAGE_DELETE",
            _delete_event(message, self.channels[message["channel_id"]].get("guild_id")),
        )

    def react(
        self, user: dict[str, Any], message_id: str, emoji: str, *, remove: bool = False
    ) -> None:
        """MESSAGE_REACTION_ADD (or _REMOVE) by a user on a message."""
        message = self.messages[message_id]
        data: dict[str, Any] = {
            "user_id": user["id"],
            "channel_id": message["channel_id"],
            "message_id": message_id,
            "emoji": {"id": None, "name": emoji},
            "burst": False,
            "type": 0,
        }
        if self.channels[message["channel_id"]].get("guild_id"):
            data["guild_id"] = self.guild_id
            if not remove:
                data["member"] = self.member(user)
                data["message_author_id"] = message["author"]["id"]
        self._broadcast("MESSAGE_REACTION_REMOVE" if remove else "MESSAGE_REACTION_ADD", data)

    def slash(
        self,
        bot: BotAccount,
        user: dict[str, Any],
        channel_id: str,
        name: str,
        options: list[dict[str, Any]] | None = None,
        *,
        autocomplete: bool = False,
    ) -> dict[str, Any]:
        """A user runs a slash command (INTERACTION_CREATE type 2, or 4 for autocomplete).

        `options` use the documented shape: `[{"name": "question", "type": 3, "value": "..."}]`,
        or a subcommand `[{"name": "info", "type": 1, "options": [...]}]`.
        """
        command = next((c for c in bot.commands if c["name"] == name), None)
        if command is None:
            raise KeyError(f"command /{name} was not synced")
        channel = self._channel(channel_id)
        interaction: dict[str, Any] = {
            "id": self.ids.next(),
            "application_id": bot.application["id"],
            "type": 4 if autocomplete else 2,
            "token": "aW50ZXJhY3Rpb24" + uuid.uuid4().hex,
            "version": 1,
            "locale": "en-US",
            "app_permissions": str(EVERYONE_PERMISSIONS),
            "entitlements": [],
            "attachment_size_limit": 10 * 1024 * 1024,
            "authorizing_integration_owners": {
                "0": self.guild_id if channel.get("guild_id") else "0"
            },
            "data": {"id": command["id"], "name": name, "type": 1, "options": options or []},
            "channel_id": channel_id,
            "channel": _public(channel),
        }
        if channel.get("guild_id"):
            interaction.update(
                guild_id=self.guild_id,
                guild_locale="en-US",
                context=0,
                guild={"id": self.guild_id, "locale": "en-US", "features": []},
                member={**self.member(user), "permissions": str(EVERYONE_PERMISSIONS)},
            )
        else:
            interaction.update(user=user, context=1)
        self.interactions[interaction["id"]] = {
            **interaction,
            "_user": user,
            "_interaction": True,
        }
        self._send(bot, "INTERACTION_CREATE", interaction)
        return interaction

    # ----------------------------------------------------------------- gateway

    def _broadcast(self, event: str, data: dict[str, Any]) -> None:
        channel = self.channels.get(str(data.get("channel_id", data.get("id", ""))), {})
        for bot in self.bots.values():
            if channel.get("type") == 1 and channel.get("_bot") != bot.id:
                continue
            self._send(bot, event, data)

    def dispatch(self, event: str, data: dict[str, Any], bot: BotAccount | None = None) -> None:
        """Send any event, as given (used for malformed payloads)."""
        for target in [bot] if bot else list(self.bots.values()):
            self._send(target, event, data, raw=True)

    def _send(
        self, bot: BotAccount, event: str, data: dict[str, Any], *, raw: bool = False
    ) -> None:
        session = bot.session
        if session is None:
            return
        if not raw and event in ("MESSAGE_CREATE", "MESSAGE_UPDATE"):
            data = self._visible(data, bot)
        session.seq += 1
        session.events.append((session.seq, event, data))
        del session.events[:-EVENT_BUFFER]
        if session.outbox is not None:
            session.outbox.put_nowait({"op": 0, "t": event, "s": session.seq, "d": data})

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        # One writer per connection keeps frames in dispatch order.
        outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        writer = asyncio.create_task(_write_frames(ws, outbox))
        outbox.put_nowait(
            {"op": 10, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}, "s": None, "t": None}
        )
        bot: BotAccount | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                op, data = payload.get("op"), payload.get("d")
                if op == 1:
                    outbox.put_nowait({"op": 11, "d": None, "s": None, "t": None})
                elif op == 2:
                    bot = self.bots.get(data["token"])
                    if bot is None:
                        await ws.close(code=4004, message=b"Authentication failed.")
                        break
                    wanted = int(data.get("intents", 0))
                    if wanted & MESSAGE_CONTENT_INTENT and not self.content_intent_granted:
                        # Requesting a privileged intent not enabled in the Developer Portal.
                        await ws.close(code=4014, message=b"Disallowed intent(s).")
                        break
                    self._identify(bot, ws, outbox, data)
                elif op == 6:
                    bot = self.bots.get(data["token"])
                    if bot is None or bot.session is None or bot.session.id != data["session_id"]:
                        outbox.put_nowait({"op": 9, "d": False, "s": None, "t": None})
                        continue
                    self._resume(bot, ws, outbox, int(data["seq"] or 0))
        finally:
            writer.cancel()
            if bot is not None and bot.session is not None and bot.session.ws is ws:
                bot.session.ws = None
                bot.session.outbox = None
                bot.connected.clear()
        return ws

    def _identify(
        self,
        bot: BotAccount,
        ws: web.WebSocketResponse,
        outbox: asyncio.Queue[dict[str, Any]],
        data: dict[str, Any],
    ) -> None:
        bot.identifies += 1
        bot.shards.append(tuple(data.get("shard") or (0, 1)))
        bot.session = Session(uuid.uuid4().hex, int(data.get("intents", 0)), ws=ws, outbox=outbox)
        ready = {
            "v": 10,
            "user": bot.user,
            "session_id": bot.session.id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "shard": [0, 1],
            "guilds": [{"id": self.guild_id, "unavailable": True}],
            "private_channels": [],
            "application": {"id": bot.application["id"], "flags": bot.application["flags"]},
            "user_settings": {},
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["us-east"],
            "_trace": ["fake-discord"],
        }
        self._send(bot, "READY", ready, raw=True)
        self._send(bot, "GUILD_CREATE", self.guild_payload(), raw=True)
        bot.connected.set()

    def _resume(
        self,
        bot: BotAccount,
        ws: web.WebSocketResponse,
        outbox: asyncio.Queue[dict[str, Any]],
        seq: int,
    ) -> None:
        session = bot.session
        assert session is not None
        bot.resumes += 1
        start = seq if self.replay_from is None else min(seq, self.replay_from)
        self.replay_from = None
        for event_seq, event, payload in session.events:
            if event_seq > start:
                outbox.put_nowait({"op": 0, "t": event, "s": event_seq, "d": payload})
        session.ws, session.outbox = ws, outbox
        self._send(bot, "RESUMED", {"_trace": ["fake-discord"]}, raw=True)
        bot.connected.set()

    async def drop(
        self, bot: BotAccount, *, code: int = 4000, replay_from: int | None = None
    ) -> None:
        """Close the bot's gateway socket (the client RESUMEs); events sent meanwhile are kept.

        `replay_from` makes the next RESUME replay from an older sequence number, as a duplicate
        delivery would.
        """
        self.replay_from = replay_from
        session = bot.session
        bot.connected.clear()
        if session is not None and session.ws is not None:
            ws, session.ws, session.outbox = session.ws, None, None
            await ws.close(code=code)

    def seq_of(self, bot: BotAccount, predicate: Callable[[str, dict[str, Any]], bool]) -> int:
        """The sequence number of the first event dispatched to `bot` that matches."""
        assert bot.session is not None
        for seq, event, data in bot.session.events:
            if predicate(event, data):
                return seq
        raise LookupError("no such event")

    # ----------------------------------------------------------------- observing

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
        """Wait until `predicate()` is truthy (re-checked after every REST call); return it."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("fake Discord: condition not met in time")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(left, 0.2))

    def calls_to(self, method: str, pattern: str) -> list[Call]:
        regex = re.compile(pattern)
        return [c for c in self.calls if c.method == method and regex.search(c.path)]

    def bot_messages(self, channel_id: str) -> list[dict[str, Any]]:
        """Messages in a channel written by a bot or a webhook, oldest first, as they are now."""
        return [
            m
            for m in self.messages.values()
            if m["channel_id"] == channel_id and (m["author"].get("bot") or m.get("webhook_id"))
        ]

    def replies_to(self, message_id: str) -> list[dict[str, Any]]:
        """Bot messages posted after `message_id` in its channel (or thread)."""
        channel_id = (
            self.messages[message_id]["channel_id"] if message_id in self.messages else None
        )
        return [
            m
            for m in self.messages.values()
            if m["channel_id"] == channel_id
            and int(m["id"]) > int(message_id)
            and (m["author"].get("bot") or m.get("webhook_id"))
        ]


def _needs_bot_auth(path: str) -> bool:
    return not path.startswith(("/webhooks/", "/interactions/"))


def _public(channel: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in channel.items() if not k.startswith("_")}


def _delete_event(message: dict[str, Any], guild_id: str | None) -> dict[str, Any]:
    data = {"id": message["id"], "channel_id": message["channel_id"]}
    if guild_id:
        data["guild_id"] = guild_id
    return data


def _json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # Exactly `application/json`: discord.py reads anything else (even with a charset) as text.
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": JSON_TYPE, **(headers or {})},
    )


class ApiError(Exception):
    """A Discord JSON error (`{"message", "code", "errors"}`) with its HTTP status."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body["message"])
        self.status = status
        self.body = body


def _error(status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> ApiError:
    body: dict[str, Any] = {"message": message, "code": code}
    if errors:
        body["errors"] = errors
    return ApiError(status, body)


async def _write_frames(ws: web.WebSocketResponse, outbox: asyncio.Queue[dict[str, Any]]) -> None:
    while True:
        frame = await outbox.get()
        try:
            await ws.send_json(frame)
        except (ConnectionError, RuntimeError):
            return  # closed meanwhile: the events stay in the session for RESUME
