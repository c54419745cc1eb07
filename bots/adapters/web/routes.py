"""The workbench routes on the `bots serve` HTTP app: the page, its fragments, chat, events.

GET  /                                   the page (?persona=ID), or the sign-in form
POST /workbench/login                    sign in with the API token (sets a cookie)
GET  /workbench/events                   server-sent events: states, evals, changes
GET  /workbench/personas/{id}/about      instructions and documents (fragment)
GET  /workbench/personas/{id}/evals      the last eval run (fragment)
POST /workbench/personas/{id}/evals/run  run the evals again
GET  /workbench/personas/{id}/feedback   reactions from chat (fragment)
GET  /workbench/personas/{id}/retrieve   ranked chunks for ?q= (fragment)
POST /workbench/personas/{id}/chat       {"text": ...} -> NDJSON: sources, text pieces, done
POST /workbench/personas/{id}/reset      forget this browser's conversation
GET  /workbench/static/...               the script and the style sheet
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

import bots.adapters.web.views as views
from bots.adapters.http.errors import http_error
from bots.adapters.http.limits import CLIENT_LIMITS_KEY
from bots.adapters.web.auth import authorized, set_session, token_matches
from bots.adapters.web.workbench import WORKBENCH_KEY, Workbench
from bots.chat.model import ChatRefused, Incoming
from bots.engine.base import EngineError
from bots.knowledge.audience import OPERATOR, server_reader
from bots.knowledge.library import KnowledgeError
from bots.persona.model import Persona
from bots.runtime import Runtime

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PLATFORM = "web"
CHAT_COOKIE = "bots_chat"
CHAT_COOKIE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
STATIC_PREFIX = "/workbench/static"
LOGIN_PATH = "/workbench/login"
MAX_CHAT_CHARS = 4000
MAX_QUERY_CHARS = 500
DEFAULT_HITS = 10
MAX_HITS = 50
HISTORY_SHOWN = 50  # turns of the current chat shown when the page loads


def mount_workbench(web_app: web.Application, app: Runtime) -> Workbench:
    """Add the workbench to the `bots serve` HTTP app (same host, port and API token, and the
    per-client limits `create_http_app` keeps under CLIENT_LIMITS_KEY)."""
    workbench = Workbench(app)
    web_app[WORKBENCH_KEY] = workbench
    web_app.middlewares.append(_guard(app))
    web_app.on_startup.append(workbench.start)
    web_app.on_shutdown.append(workbench.shutdown)
    web_app.router.add_get("/", index)
    web_app.router.add_post(LOGIN_PATH, login)
    web_app.router.add_get(LOGIN_PATH, to_page)
    web_app.router.add_get("/workbench/events", events)
    base = "/workbench/personas/{persona}"
    web_app.router.add_get(f"{base}/about", about)
    web_app.router.add_get(f"{base}/evals", evals)
    web_app.router.add_post(f"{base}/evals/run", run_evals)
    web_app.router.add_get(f"{base}/feedback", feedback)
    web_app.router.add_get(f"{base}/retrieve", retrieve)
    web_app.router.add_post(f"{base}/chat", chat)
    web_app.router.add_post(f"{base}/reset", reset)
    static = Path(str(resources.files(__package__).joinpath("static")))
    web_app.router.add_static(STATIC_PREFIX, static, append_version=False)
    return workbench


def _guard(app: Runtime) -> Middleware:
    server = app.settings.server

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path != "/" and not path.startswith("/workbench/"):
            return await handler(request)
        if path.startswith(STATIC_PREFIX + "/") or path == LOGIN_PATH:
            return await handler(request)
        if authorized(request, server.api_token):
            return await handler(request)
        if path == "/":
            return _html(views.login_page(failed=False), status=401)
        return web.json_response({"error": "sign in with the API token first"}, status=401)

    return guard


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text, status=status, content_type="text/html", headers={"Cache-Control": "no-store"}
    )


def _workbench(request: web.Request) -> Workbench:
    return request.app[WORKBENCH_KEY]


def _persona(request: web.Request) -> Persona:
    persona = _workbench(request).app.registry.get(request.match_info["persona"])
    if persona is None:
        raise web.HTTPNotFound(text=f"no persona {request.match_info['persona']!r}")
    return persona


def _chat_id(request: web.Request) -> str:
    value = request.cookies.get(CHAT_COOKIE, "")
    return value if CHAT_COOKIE_PATTERN.match(value) else ""


def _place(chat_id: str, persona_id: str) -> str:
    return f"{chat_id or 'anonymous'}/{persona_id}"


def _require_json(request: web.Request) -> None:
    # Forms and "simple" cross-site requests cannot send JSON: see `auth`.
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="send application/json")


async def index(request: web.Request) -> web.Response:
    workbench = _workbench(request)
    app = workbench.app
    states = app.registry.states()
    selected = request.query.get("persona") or (states[0].id if states else "")
    state = app.registry.state(selected)
    persona = state.persona if state else None
    chat_id = _chat_id(request) or secrets.token_urlsafe(12)
    panel = ""
    if persona is not None:
        turns = await app.service.history(PLATFORM, _place(chat_id, persona.id), HISTORY_SHOWN)
        shelves = await asyncio.to_thread(_shelves, app, persona)
        panel = views.persona_panel(
            persona,
            state,
            history_html=views.history(turns),
            about_html=views.about(persona, shelves, workbench.root),
            evals_html=workbench.evals_html(persona.id),
            root=workbench.root,
        )
    else:
        panel = views.persona_panel(
            None, state, history_html="", about_html="", evals_html="", root=workbench.root
        )
    html = views.page(
        personas_html=workbench.personas_html(selected), persona_id=selected, panel_html=panel
    )
    response = _html(html)
    if not _chat_id(request):
        response.set_cookie(CHAT_COOKIE, chat_id, httponly=True, samesite="Strict", path="/")
    return response


async def login(request: web.Request) -> web.Response:
    token = _workbench(request).app.settings.server.api_token
    form = await request.post()
    given = form.get("token")
    if not token or (isinstance(given, str) and token_matches(given.strip(), token)):
        response = web.HTTPSeeOther("/")
        if token:
            set_session(response, token)
        raise response
    return _html(views.login_page(failed=True), status=401)


async def to_page(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/")


async def events(request: web.Request) -> web.StreamResponse:
    workbench = _workbench(request)
    return await workbench.hub.stream(request, [workbench.personas_event()])


async def about(request: web.Request) -> web.Response:
    workbench = _workbench(request)
    persona = _persona(request)
    shelves = await asyncio.to_thread(_shelves, workbench.app, persona)
    return _html(views.about(persona, shelves, workbench.root))


async def evals(request: web.Request) -> web.Response:
    return _html(_workbench(request).evals_html(_persona(request).id))


async def run_evals(request: web.Request) -> web.Response:
    _require_json(request)
    persona = _persona(request)
    _workbench(request).monitor.request(persona.id, force=True)
    return web.json_response({"persona": persona.id, "running": True}, status=202)


async def feedback(request: web.Request) -> web.Response:
    items = await _workbench(request).app.service.feedback(_persona(request).id)
    return _html(views.feedback(items))


async def retrieve(request: web.Request) -> web.Response:
    app = _workbench(request).app
    persona = _persona(request)
    query = request.query.get("q", "")[:MAX_QUERY_CHARS]
    try:
        k = min(max(int(request.query.get("k", DEFAULT_HITS)), 1), MAX_HITS)
    except ValueError:
        k = DEFAULT_HITS
    retrieval = app.settings.retrieval
    strict = persona.grounding == "strict"
    # The floor `ChatService.start` applies: below it a chunk never reaches the prompt.
    floor = retrieval.min_score if strict else retrieval.min_score_open
    # Every chunk is ranked, so the view can say which ones this workbench may not use.
    search = app.service.retrieve
    try:
        hits = await asyncio.to_thread(search, persona, query, k, OPERATOR) if query else []
    except KnowledgeError as exc:
        return _html(f'<p class="error">{views.h(exc)}</p>')
    reader = server_reader(app.settings.server.audience)
    return _html(views.retrieval(query, hits, floor, strict, reader))


async def chat(request: web.Request) -> web.StreamResponse:
    _require_json(request)
    app = _workbench(request).app
    persona = _persona(request)
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return web.json_response({"error": "the body is not valid JSON"}, status=400)
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_CHAT_CHARS:
        message = f"'text' must be a message of 1 to {MAX_CHAT_CHARS} characters"
        return web.json_response({"error": message}, status=400)
    # The same per-client limits as the API: one page (or a script with the token) cannot hold
    # the model against everyone else.
    limits = request.app[CLIENT_LIMITS_KEY]
    client = limits.client(request)
    limited = limits.admit(client, persona.id, PLATFORM)
    if limited is not None:
        headers = {"Retry-After": str(limited.retry_after_s)}
        return web.json_response({"error": limited.message}, status=429, headers=headers)
    try:
        return await _answer(request, app, persona, text.strip())
    finally:
        limits.release(client)


async def _answer(
    request: web.Request, app: Runtime, persona: Persona, text: str
) -> web.StreamResponse:
    chat_id = _chat_id(request)
    incoming = Incoming(
        platform=PLATFORM,
        place=_place(chat_id, persona.id),
        user_id=f"web:{chat_id or 'anonymous'}",
        text=text,
        persona_id=persona.id,
        reader=server_reader(app.settings.server.audience),
    )
    try:
        reply = await app.service.start(incoming)
    except (ChatRefused, EngineError) as exc:
        return http_error(exc).plain()
    response = web.StreamResponse(
        headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    pieces = reply.__aiter__()
    try:
        await _line(response, type="sources", sources=[views.hit_dict(h) for h in reply.sources])
        try:
            async for piece in pieces:
                await _line(response, type="text", text=piece)
        except EngineError as exc:
            await _line(response, type="error", error=str(exc))
        gate = reply.grounding
        await _line(
            response,
            type="done",
            finish_reason=reply.finish_reason,
            turn=reply.turn_id,
            grounding=gate.as_dict() if gate else None,
        )
        await response.write_eof()
    except ConnectionResetError:
        log.info("the page closed while %s was answering", persona.id)
    finally:
        await pieces.aclose()  # type: ignore[attr-defined]
    return response


async def _line(response: web.StreamResponse, **data: Any) -> None:
    await response.write(json.dumps(data, ensure_ascii=False).encode() + b"\n")


async def reset(request: web.Request) -> web.Response:
    _require_json(request)
    app = _workbench(request).app
    persona = _persona(request)
    forgotten = await app.service.reset(PLATFORM, _place(_chat_id(request), persona.id))
    return web.json_response({"persona": persona.id, "forgotten": forgotten})


def _shelves(app: Runtime, persona: Persona) -> list[views.Shelf]:
    """The persona's documents, per index (blocks while an index is first built)."""
    shelves = []
    sources = [("this folder", None), *((f"library {n}", n) for n in persona.knowledge)]
    for label, library in sources:
        try:
            index = (
                app.knowledge.index_for_library(library)
                if library
                else app.knowledge.index_for_persona(persona.id)
            )
        except KnowledgeError as exc:
            shelves.append(views.Shelf(label, (), (str(exc),)))
            continue
        counts: dict[str, tuple[str, int]] = {}
        for chunk in index.chunks:
            title, count = counts.get(chunk.path, (chunk.title, 0))
            counts[chunk.path] = (title, count + 1)
        prefix = f"{library}/" if library else ""
        documents = tuple(
            views.Document(prefix + path, title, count) for path, (title, count) in counts.items()
        )
        stats = index.stats
        shelves.append(views.Shelf(label, documents, stats.skipped, stats.excluded))
    return shelves
