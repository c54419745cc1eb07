"""The remote engine against real servers on 127.0.0.1: an OpenAI-compatible app backed by the
real batched engine, small servers that fail on purpose, and llama-server when it is built."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from bots.bench.llama_server import installed_binary, running_llama_server
from bots.engine.base import (
    ChatMessage,
    EngineBusy,
    EngineError,
    EngineTimeout,
    GenerationRequest,
)
from bots.engine.batched import BatchedEngine
from bots.engine.model_files import default_model_path
from bots.engine.remote import RemoteEngine, chat_completions_url
from tests.fakes.engines import collect

SYSTEM = (
    "You are Rosa, a gardener who loves tomatoes and talks about compost whenever she can. You "
    "grow vegetables on a small city balcony and answer with practical steps."
)
MESSAGES = (ChatMessage("system", SYSTEM), ChatMessage("user", "How do I start a compost heap?"))

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request(**kw: object) -> GenerationRequest:
    kw.setdefault("max_tokens", 16)
    kw.setdefault("temperature", 0.0)
    return GenerationRequest(messages=MESSAGES, **kw)  # type: ignore[arg-type]


def openai_app(engine: BatchedEngine) -> web.Application:
    """POST /v1/chat/completions, streamed as server-sent events, from a real engine."""

    async def completions(req: web.Request) -> web.StreamResponse:
        body = await req.json()
        gen = GenerationRequest(
            messages=tuple(ChatMessage(m["role"], m["content"]) for m in body["messages"]),
            max_tokens=body["max_tokens"],
            temperature=body["temperature"],
            top_p=body["top_p"],
            top_k=body["top_k"],
            repeat_penalty=body["repeat_penalty"],
            seed=body.get("seed"),
            stop=tuple(body.get("stop", ())),
        )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        async for piece in engine.stream(gen):
            delta = {"content": piece.text} if piece.text else {}
            choice = {"index": 0, "delta": delta, "finish_reason": piece.finish_reason}
            event: dict[str, object] = {"choices": [choice]}
            if piece.usage is not None:
                event["usage"] = {
                    "prompt_tokens": piece.usage.prompt_tokens,
                    "completion_tokens": piece.usage.completion_tokens,
                    "prompt_tokens_details": {"cached_tokens": piece.usage.cached_tokens},
                }
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def handler_app(handler: Handler) -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return app


async def sse_reply(req: web.Request, words: list[str], delay_s: float = 0.0) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(req)
    for word in words:
        event = {"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
        await resp.write(f"data: {json.dumps(event)}\n\n".encode())
        await asyncio.sleep(delay_s)
    await resp.write(b"data: [DONE]\n\n")
    return resp


@pytest.fixture
async def local_engine() -> AsyncIterator[BatchedEngine]:
    engine = BatchedEngine(default_model_path(), n_ctx=1024, kv_cells=2048)
    await engine.start()
    yield engine
    await engine.close()


@pytest.fixture
async def servers() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner, url = await serve(app)
        runners.append(runner)
        return url

    yield start
    for runner in runners:
        await runner.cleanup()


async def remote(url: str, **kw: object) -> RemoteEngine:
    engine = RemoteEngine(url, **kw)  # type: ignore[arg-type]
    await engine.start()
    return engine


def test_endpoint_forms_all_reach_chat_completions() -> None:
    expected = "http://h:1/v1/chat/completions"
    for form in ("http://h:1", "http://h:1/", "http://h:1/v1", expected):
        assert chat_completions_url(form) == expected


async def test_remote_stream_matches_the_engine_behind_it(local_engine, servers) -> None:
    direct, _ = await collect(local_engine, request())
    engine = await remote(await servers(openai_app(local_engine)))
    try:
        text, last = await collect(engine, request())
    finally:
        await engine.close()
    assert text == direct
    assert last.finish_reason == "length"
    assert last.usage is not None
    assert last.usage.prompt_tokens > 40 and last.usage.completion_tokens == 16
    assert last.usage.cached_tokens > 40, "the server's own prefix cache answered"


async def test_closing_the_stream_cancels_the_generation_on_the_server(
    local_engine, servers
) -> None:
    engine = await remote(await servers(openai_app(local_engine)))
    try:
        stream = engine.stream(request(max_tokens=500))
        async for _ in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5
        while local_engine.status().active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert local_engine.status().active == 0
        assert engine.status().active == 0
    finally:
        await engine.close()


async def test_failures_before_the_first_token_are_retried_on_the_next_endpoint(servers) -> None:
    calls: list[str] = []

    async def flaky(req: web.Request) -> web.StreamResponse:
        calls.append("flaky")
        return web.json_response({"error": {"message": "overloaded"}}, status=503)

    async def good(req: web.Request) -> web.StreamResponse:
        calls.append("good")
        return await sse_reply(req, ["Hello", " there"])

    flaky_url = await servers(handler_app(flaky))
    good_url = await servers(handler_app(good))
    engine = await remote(f"{flaky_url},{good_url}", retries=2)
    try:
        text, last = await collect(engine, request())
    finally:
        await engine.close()
    assert text == "Hello there" and last.finish_reason == "stop"
    assert calls == ["flaky", "good"]


async def test_refused_connections_are_retried_then_reported(servers) -> None:
    dead_runner, dead_url = await serve(web.Application())
    await dead_runner.cleanup()  # nothing listens there any more
    engine = await remote(dead_url, retries=1)
    started = time.monotonic()
    try:
        with pytest.raises(EngineError, match="failed 2 times"):
            await collect(engine, request())
    finally:
        await engine.close()
    assert time.monotonic() - started < 5


async def test_client_errors_are_not_retried(servers) -> None:
    calls = 0

    async def bad(req: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        return web.json_response({"error": {"message": "unknown model"}}, status=404)

    engine = await remote(await servers(handler_app(bad)), retries=3)
    try:
        with pytest.raises(EngineError, match="unknown model"):
            await collect(engine, request())
    finally:
        await engine.close()
    assert calls == 1


async def test_a_stalled_server_times_out(servers) -> None:
    async def stalled(req: web.Request) -> web.StreamResponse:
        return await sse_reply(req, ["slow"] * 50, delay_s=0.2)

    engine = await remote(await servers(handler_app(stalled)))
    try:
        with pytest.raises(EngineTimeout):
            await collect(engine, request(timeout_s=0.5))
    finally:
        await engine.close()


async def test_full_queue_answers_busy_at_once(servers) -> None:
    release = asyncio.Event()

    async def slow(req: web.Request) -> web.StreamResponse:
        await release.wait()
        return await sse_reply(req, ["ok"])

    engine = await remote(await servers(handler_app(slow)), parallel=1, queue_size=1)
    try:
        first = asyncio.create_task(collect(engine, request()))
        second = asyncio.create_task(collect(engine, request()))
        while engine.status().queue_depth < 1:
            await asyncio.sleep(0.01)
        with pytest.raises(EngineBusy):
            await collect(engine, request())
        release.set()
        assert [r[0] for r in await asyncio.gather(first, second)] == ["ok", "ok"]
    finally:
        await engine.close()


async def test_count_tokens_overestimates_without_a_tokenizer_and_is_exact_with_one(
    local_engine,
) -> None:
    text = "How do I start a compost heap on a small balcony?"
    rough = RemoteEngine("http://127.0.0.1:9")
    assert rough.count_tokens(text) >= local_engine.count_tokens(text)
    exact = RemoteEngine("http://127.0.0.1:9", tokenizer_path=default_model_path())
    await exact.start()
    try:
        assert exact.count_tokens(text) == local_engine.count_tokens(text)
    finally:
        await exact.close()


@pytest.mark.skipif(
    installed_binary() is None,
    reason="llama-server is not built: python -m bots.bench.llama_server",
)
async def test_streams_from_a_real_llama_server() -> None:
    binary = installed_binary()
    assert binary is not None
    with running_llama_server(
        binary, default_model_path(), args=("-c", "2048", "-np", "1", "-nr")
    ) as url:
        engine = await remote(url, model="smollm2")
        try:
            text, last = await collect(engine, request(max_tokens=12))
            stream = engine.stream(request(max_tokens=400))
            async for _ in stream:
                break
            await stream.aclose()  # type: ignore[attr-defined]
        finally:
            await engine.close()
    assert text.strip()
    assert last.usage is not None and last.usage.prompt_tokens > 40
    assert last.usage.completion_tokens == 12


def test_an_empty_endpoint_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match=r"model\.endpoint"):
        RemoteEngine(" , ")
