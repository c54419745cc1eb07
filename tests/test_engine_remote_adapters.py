"""The remote engine passes a request's adapter on: to llama-server as `lora` ids from its
`GET /lora-adapters`, to vLLM as the adapter's name in `model`; and to a real llama-server
started with the adapter, whose replies it then changes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bots.bench.llama_server import installed_binary, running_llama_server
from bots.engine.base import Adapter, ChatMessage, EngineError, GenerationRequest
from bots.engine.model_files import default_model_path
from bots.engine.remote import RemoteEngine
from tests.fakes.lora import write_lora

HANDBOOK_3 = Adapter("handbook@3", "/srv/bots/.bots/adapters/handbook/3/adapter.gguf", 0.5)


def ask(adapter: Adapter | None = None, max_tokens: int = 4) -> GenerationRequest:
    messages = (
        ChatMessage("system", "You are a pirate. Always answer like a pirate."),
        ChatMessage("user", "Where is the treasure?"),
    )
    return GenerationRequest(messages, max_tokens=max_tokens, temperature=0.0, adapter=adapter)


class FakeServer:
    """A loopback chat server recording each request body; with `adapters`, a llama-server
    listing them at /lora-adapters, without, a vLLM (which has no such route)."""

    def __init__(self, adapters: list[dict[str, Any]] | None) -> None:
        self.adapters = adapters
        self.bodies: list[dict[str, Any]] = []
        self.listings = 0
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self._completions)
        if adapters is not None:
            self.app.router.add_get("/lora-adapters", self._lora_adapters)

    async def _lora_adapters(self, _: web.Request) -> web.Response:
        self.listings += 1
        return web.json_response(self.adapters)

    async def _completions(self, req: web.Request) -> web.StreamResponse:
        self.bodies.append(await req.json())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        event = {"choices": [{"index": 0, "delta": {"content": "arr"}, "finish_reason": "stop"}]}
        await resp.write(f"data: {json.dumps(event)}\n\ndata: [DONE]\n\n".encode())
        return resp


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []
    engines: list[RemoteEngine] = []

    async def start(server: FakeServer) -> RemoteEngine:
        runner = web.AppRunner(server.app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        engine = RemoteEngine(f"http://127.0.0.1:{runner.addresses[0][1]}", model="smollm2")
        await engine.start()
        engines.append(engine)
        return engine

    yield start
    for engine in engines:
        await engine.close()
    for runner in runners:
        await runner.cleanup()


async def drain(engine: RemoteEngine, request: GenerationRequest) -> str:
    return "".join([piece.text async for piece in engine.stream(request)])


async def test_llama_server_is_sent_the_adapter_by_id_and_the_others_at_scale_zero(serve) -> None:
    listed = [
        {"id": 0, "path": "/models/handbook/2/adapter.gguf", "scale": 0.0},
        {"id": 1, "path": "/models/handbook/3/adapter.gguf", "scale": 0.0},
        {"id": 2, "path": "/models/other.gguf", "scale": 0.0},
    ]
    server = FakeServer(listed)
    engine = await serve(server)
    await drain(engine, ask())
    await drain(engine, ask(HANDBOOK_3))
    await drain(engine, ask())
    first, tuned, base = server.bodies
    assert tuned["lora"] == [
        {"id": 0, "scale": 0.0},
        {"id": 1, "scale": 0.5},
        {"id": 2, "scale": 0.0},
    ]
    assert tuned["model"] == "smollm2"
    # Without an adapter every one at 0: llama-server would otherwise apply its start-up scales.
    assert first["lora"] == base["lora"] == [{"id": n, "scale": 0.0} for n in range(3)]
    assert server.listings == 1


async def test_llama_server_without_the_adapter_is_an_error_naming_it(serve) -> None:
    server = FakeServer([{"id": 0, "path": "/models/handbook/2/adapter.gguf", "scale": 0.0}])
    engine = await serve(server)
    with pytest.raises(EngineError, match=r"handbook@3.*--lora"):
        await drain(engine, ask(HANDBOOK_3))
    assert server.bodies == []


async def test_vllm_is_sent_the_adapter_name_as_the_model(serve) -> None:
    server = FakeServer(None)
    engine = await serve(server)
    await drain(engine, ask(HANDBOOK_3))
    await drain(engine, ask())
    tuned, base = server.bodies
    assert tuned["model"] == "handbook@3" and "lora" not in tuned
    assert base["model"] == "smollm2"


async def test_a_real_llama_server_applies_the_adapter_only_when_asked(tmp_path: Path) -> None:
    binary = installed_binary()
    assert binary is not None
    lora = write_lora(tmp_path / "pirate" / "1" / "adapter.gguf")
    args = ("-c", "2048", "-np", "1", "-nr", "--lora", str(lora))
    with running_llama_server(binary, default_model_path(), args=args) as url:
        engine = RemoteEngine(url, model="smollm2")
        await engine.start()
        try:
            before = await drain(engine, ask(max_tokens=16))
            tuned = await drain(engine, ask(Adapter("pirate@1", str(lora)), max_tokens=16))
            after = await drain(engine, ask(max_tokens=16))
        finally:
            await engine.close()
    assert tuned != before
    assert after == before
