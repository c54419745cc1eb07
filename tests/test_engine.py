"""Engine contract with the real embedded model, for every local engine: streaming, cancellation,
a full queue answering busy at once, a waiting request told its place in line, and the
timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bots.engine.base import ChatMessage, Engine, EngineBusy, EngineTimeout, GenerationRequest
from bots.engine.factory import make_engine
from bots.settings import load_settings
from tests.fakes.waiting import until


def request(text: str = "Count from one to twenty in words.", **kw: object) -> GenerationRequest:
    messages = (ChatMessage("system", "You are a helpful assistant."), ChatMessage("user", text))
    return GenerationRequest(messages=messages, **{"max_tokens": 32, "temperature": 0.0, **kw})  # type: ignore[arg-type]


@pytest.fixture(params=["simple", "batched"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    settings = load_settings(
        Path("."),
        environ={},
        overrides={
            "model.engine": request.param,
            "model.n_ctx": 2048,
            "model.queue_size": 2,
            "model.parallel": 1,
        },
    )
    eng = make_engine(settings)
    await eng.start()
    try:
        yield eng
    finally:
        await eng.close()


async def collect(engine: Engine, req: GenerationRequest) -> tuple[str, list[str]]:
    pieces = []
    async for piece in engine.stream(req):
        pieces.append(piece)
    return "".join(p.text for p in pieces), [p.finish_reason or "" for p in pieces]


async def test_streams_pieces_and_reports_usage(engine: Engine) -> None:
    pieces = [p async for p in engine.stream(request())]
    assert len([p for p in pieces if p.text]) > 3
    last = pieces[-1]
    assert last.finish_reason in ("stop", "length") and last.usage is not None
    assert last.usage.completion_tokens > 0 and last.usage.prompt_tokens > 10
    assert "".join(p.text for p in pieces).strip()


async def test_greedy_generation_is_deterministic(engine: Engine) -> None:
    first, _ = await collect(engine, request(seed=1))
    second, _ = await collect(engine, request(seed=1))
    assert first == second


async def test_max_tokens_bounds_the_reply(engine: Engine) -> None:
    pieces = [p async for p in engine.stream(request(max_tokens=5))]
    assert pieces[-1].finish_reason == "length"
    assert pieces[-1].usage is not None and pieces[-1].usage.completion_tokens <= 5


async def test_closing_the_stream_cancels_and_frees_the_engine(engine: Engine) -> None:
    stream = engine.stream(request(max_tokens=200))
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    started = time.perf_counter()
    text, _ = await collect(engine, request(max_tokens=4))
    assert text and time.perf_counter() - started < 20
    assert engine.status().active == 0


async def test_full_queue_answers_busy_at_once(engine: Engine) -> None:
    capacity = engine.status().queue_capacity
    streams = [engine.stream(request(max_tokens=64)) for _ in range(capacity + 3)]
    tasks = [asyncio.create_task(s.__anext__()) for s in streams]  # type: ignore[attr-defined]
    _done, _ = await asyncio.wait(tasks, timeout=60, return_when=asyncio.ALL_COMPLETED)
    busy = [t for t in tasks if t.done() and isinstance(t.exception(), EngineBusy)]
    assert busy, "an engine with a full queue must refuse at once"
    assert all(t.done() for t in tasks)
    for s in streams:
        await s.aclose()  # type: ignore[attr-defined]
    text, _ = await collect(engine, request(max_tokens=4))
    assert text  # recovers once the queue drains


async def test_a_request_closed_while_it_waits_frees_its_place_at_once(engine: Engine) -> None:
    holding = engine.stream(request(max_tokens=400, text="Write a long story about the sea."))
    async for piece in holding:
        if piece.text:
            break  # the only slot stays taken while the test runs
    capacity = engine.status().queue_capacity
    waiting = [engine.stream(request(max_tokens=4)) for _ in range(capacity)]
    for stream in waiting:
        first = await stream.__anext__()  # type: ignore[attr-defined]
        assert first.ahead is not None
    for stream in waiting:
        await stream.aclose()  # type: ignore[attr-defined]
    # The slot is still taken, so only the closed requests' places can make room for this one.
    again = engine.stream(request(max_tokens=4))
    first = await again.__anext__()  # type: ignore[attr-defined]
    assert first.ahead == 1
    await holding.aclose()  # type: ignore[attr-defined]
    assert "".join([p.text async for p in again])


async def test_a_waiting_request_is_told_its_place_in_line(engine: Engine) -> None:
    holding = engine.stream(request(max_tokens=400, text="Write a long story about the sea."))
    async for piece in holding:
        if piece.text:
            break  # the first reply has the only slot, and keeps it while it generates
    places: dict[str, list[int]] = {"second": [], "third": []}

    async def follow(name: str) -> str:
        text = ""
        async for piece in engine.stream(request(max_tokens=4)):
            if piece.ahead is not None:
                assert not text and not piece.text, "places come before the reply, alone"
                places[name].append(piece.ahead)
            text += piece.text
        return text

    second = asyncio.create_task(follow("second"))
    await until(lambda: places["second"], timeout=60, what="the second told its place")
    third = asyncio.create_task(follow("third"))
    await until(lambda: places["third"], timeout=60, what="the third told its place")
    await holding.aclose()  # type: ignore[attr-defined]
    texts = await asyncio.gather(second, third)
    assert places == {"second": [1], "third": [2, 1]}, "told once per move, in order"
    assert all(texts)


async def test_timeout_stops_a_long_generation(engine: Engine) -> None:
    with pytest.raises(EngineTimeout):
        await collect(engine, request(max_tokens=2000, timeout_s=0.3, text="Write a long story."))
    text, _ = await collect(engine, request(max_tokens=4))
    assert text
