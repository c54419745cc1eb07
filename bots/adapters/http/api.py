"""OpenAI-compatible HTTP API: one model per persona, streaming (SSE) and not, plus health/status.

`POST /v1/chat/completions` answers as the persona named by `model`. The persona's own
instructions are the system prompt: client system messages are ignored. With a `user` field (and
optionally `conversation`) the conversation lives in the store and only the last user message is
new; without one the request's own messages are the history. Each client (its address, see
`http_limits`) may have a few replies under way and start a bounded number per window; beyond
that it gets 429 with `Retry-After`, and the others are still served. Without an API token,
every endpoint answers only requests addressed to the server's own names (`hosts.py`).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from bots.adapters.http.errors import http_error
from bots.adapters.http.hosts import host_guard
from bots.adapters.http.limits import CLIENT_LIMITS_KEY, ClientLimits
from bots.adapters.http.status import status_report
from bots.adapters.web.routes import mount_workbench
from bots.chat.model import ChatRefused, Incoming
from bots.chat.reply import Reply
from bots.engine.base import ChatMessage, EngineError, EngineTimeout
from bots.knowledge.audience import server_reader
from bots.observability.health import HealthProbe
from bots.observability.metrics import CONTENT_TYPE, Metrics
from bots.runtime import Runtime

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
APP_KEY = web.AppKey("bots_app", Runtime)
METRICS_KEY = web.AppKey("bots_metrics", Metrics)
HEALTH_KEY = web.AppKey("bots_health", HealthProbe)
OPEN_PATHS = ("/healthz",)
MAX_MESSAGES = 200


def error(
    status: int, message: str, kind: str = "invalid_request_error", **headers: str
) -> web.Response:
    """An OpenAI-style error body."""
    return web.json_response(
        {"error": {"message": message, "type": kind, "code": status}},
        status=status,
        headers=headers,
    )


def create_http_app(app: Runtime) -> web.Application:
    """The aiohttp application for `bots serve` (adapters may add routes to it)."""
    server = app.settings.server
    web_app = web.Application(
        client_max_size=server.max_request_bytes,
        middlewares=[host_guard(server), _auth_middleware(server.api_token)],
    )
    web_app[APP_KEY] = app
    metrics = Metrics()
    metrics.attach(app)
    web_app[METRICS_KEY] = metrics
    web_app[CLIENT_LIMITS_KEY] = ClientLimits(server, on_limited=metrics.observe_reply)
    web_app[HEALTH_KEY] = HealthProbe(app.engine)
    web_app.router.add_get("/v1/models", list_models)
    web_app.router.add_post("/v1/chat/completions", chat_completions)
    web_app.router.add_get("/healthz", healthz)
    web_app.router.add_get("/status", status)
    web_app.router.add_get("/metrics", metrics_text)
    mount_workbench(web_app, app)
    if server.cors_origins:
        web_app.middlewares.append(_cors_middleware(server.cors_origins))
    return web_app


def _auth_middleware(token: str) -> Middleware:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            token
            and request.path not in OPEN_PATHS
            and request.path.startswith(("/v1/", "/status", "/metrics"))
        ):
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return error(401, "missing or wrong bearer token", "authentication_error")
        return await handler(request)

    return auth


def _cors_middleware(origins: tuple[str, ...]) -> Middleware:
    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin", "")
        allowed = origin if origin in origins or "*" in origins else ""
        if request.method == "OPTIONS" and allowed:
            response: web.StreamResponse = web.Response(status=204)
        else:
            response = await handler(request)
        if allowed:
            response.headers["Access-Control-Allow-Origin"] = allowed
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        return response

    return cors


async def list_models(request: web.Request) -> web.Response:
    app = request.app[APP_KEY]
    data = [
        {
            "id": p.id,
            "object": "model",
            "created": int(p.loaded_at),
            "owned_by": "bots",
            "name": p.display_name,
            "description": p.description,
        }
        for p in app.registry.personas()
    ]
    return web.json_response({"object": "list", "data": data})


async def healthz(request: web.Request) -> web.Response:
    """200 when the model answers a one-token probe; 503 while it restarts or the bot stops."""
    if request.app[APP_KEY].service.draining:
        return web.json_response({"ok": False, "detail": "shutting down"}, status=503)
    health = await request.app[HEALTH_KEY].check()
    store = await request.app[APP_KEY].store.health()
    # The database is reported, not judged: restarting this instance would not bring it back,
    # and messages are refused with a short notice until it answers again.
    body = {
        "ok": health.ok,
        "detail": health.detail,
        "database": {"ok": store.ok, "backend": store.backend, "detail": store.detail},
    }
    return web.json_response(body, status=200 if health.ok else 503)


async def metrics_text(request: web.Request) -> web.Response:
    """Prometheus text format."""
    body = request.app[METRICS_KEY].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def status(request: web.Request) -> web.Response:
    """The server's state as JSON, for `bots status` and monitoring (see `status.py`)."""
    return web.json_response(await status_report(request.app[APP_KEY]))


def _parse(body: Any) -> tuple[str, list[ChatMessage], dict[str, Any]]:
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("'model' must be a persona id (see GET /v1/models)")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw or len(raw) > MAX_MESSAGES:
        raise ValueError(f"'messages' must be a list of 1 to {MAX_MESSAGES} messages")
    messages = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or item.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{i}] needs a role of system, user or assistant")
        content = item.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be text")
        messages.append(ChatMessage(item["role"], content))
    if messages[-1].role != "user":
        raise ValueError("the last message must have role 'user'")
    options: dict[str, Any] = {}
    for key, kind in (("temperature", (int, float)), ("max_tokens", int), ("seed", int)):
        value = body.get(key)
        if value is not None:
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"'{key}' has the wrong type")
            options[key] = value
    if "max_completion_tokens" in body and "max_tokens" not in options:
        value = body["max_completion_tokens"]
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("'max_completion_tokens' must be an integer")
        options["max_tokens"] = value
    if "max_tokens" in options and not 1 <= options["max_tokens"] <= 8192:
        raise ValueError("'max_tokens' must be between 1 and 8192")
    if "temperature" in options and not 0 <= options["temperature"] <= 2:
        raise ValueError("'temperature' must be between 0 and 2")
    for key in ("user", "conversation"):
        value = body.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > 256):
            raise ValueError(f"'{key}' must be text of at most 256 characters")
        options[key] = value
    options["stream"] = bool(body.get("stream", False))
    return model, messages, options


async def chat_completions(request: web.Request) -> web.StreamResponse:
    app = request.app[APP_KEY]
    try:
        body = await request.json()
        model, messages, options = _parse(body)
    except json.JSONDecodeError:
        return error(400, "the body is not valid JSON")
    except ValueError as exc:
        return error(400, str(exc))
    try:
        app.service.persona(model)
    except ChatRefused as exc:
        return http_error(exc).openai()
    limits = request.app[CLIENT_LIMITS_KEY]
    client = limits.client(request)
    limited = limits.admit(client, model, "http")
    if limited is not None:
        retry = {"Retry-After": str(limited.retry_after_s)}
        return error(429, limited.message, "rate_limit_exceeded", **retry)
    try:
        return await _complete(request, app, model, messages, options)
    finally:
        limits.release(client)


async def _complete(
    request: web.Request,
    app: Runtime,
    model: str,
    messages: list[ChatMessage],
    options: dict[str, Any],
) -> web.StreamResponse:
    user = options.get("user")
    history = tuple(m for m in messages[:-1] if m.role != "system")
    place = f"{user}/{options.get('conversation') or model}" if user else ""
    incoming = Incoming(
        platform="http",
        place=place,
        user_id=user or request.remote or "",
        text=messages[-1].content,
        persona_id=model,
        remember=bool(user),
        history=history,
        temperature=options.get("temperature"),
        max_tokens=options.get("max_tokens"),
        seed=options.get("seed"),
        reader=server_reader(app.settings.server.audience),
    )
    try:
        reply = await app.service.start(incoming)
    except (ChatRefused, EngineError) as exc:
        return http_error(exc).openai()
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    if options["stream"]:
        return await _stream(request, reply, completion_id)
    try:
        async for _ in reply:
            pass
    except EngineTimeout as exc:
        return error(504, str(exc), "timeout")
    except EngineError as exc:
        return error(503, str(exc), "server_error")
    return web.json_response(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.persona.id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.text},
                    "finish_reason": _finish(reply),
                }
            ],
            "usage": _usage(reply),
            "sources": reply.source_dicts(),
            **_grounding(reply),
        }
    )


async def _stream(request: web.Request, reply: Reply, completion_id: str) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": reply.persona.id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n".encode()

    await response.write(chunk({"role": "assistant", "content": ""}))
    try:
        async for piece in reply:
            await response.write(chunk({"content": piece}))
    except EngineError as exc:
        await response.write(f"data: {json.dumps({'error': {'message': str(exc)}})}\n\n".encode())
    else:
        await response.write(
            chunk(
                {},
                _finish(reply),
                usage=_usage(reply),
                sources=reply.source_dicts(),
                **_grounding(reply),
            )
        )
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _grounding(reply: Reply) -> dict[str, Any]:
    """What the grounding gate of a strict persona did, as an extra field; nothing otherwise."""
    report = reply.grounding
    return {"grounding": report.as_dict()} if report is not None else {}


def _finish(reply: Reply) -> str:
    return "length" if reply.finish_reason == "length" else "stop"


def _usage(reply: Reply) -> dict[str, int]:
    usage = reply.usage
    prompt = usage.prompt_tokens if usage else (reply.prompt.prompt_tokens if reply.prompt else 0)
    completion = usage.completion_tokens if usage else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
