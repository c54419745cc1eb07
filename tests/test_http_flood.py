"""Floods on the HTTP server: one client's burst is capped and refused with 429 and `Retry-After`
while other clients are answered; the per-client request window holds and reopens.

The real API app (`create_http_app`) serves on 127.0.0.1 in front of a real app whose engine is
the scripted one, held at a gate so that replies stay under way exactly as long as a test needs
(the real model cannot be held mid-reply on cue). Clients are told apart the way the server does
it: httpx connects from different loopback addresses (127.0.0.2, 127.0.0.3 are distinct peers),
or through a trusted proxy that names them in `X-Forwarded-For`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bots.adapters.http.api import create_http_app
from bots.runtime import Runtime
from bots.settings import ServerSettings, Settings, SettingsError, load_settings
from tests.fakes.engines import ScriptedEngine
from tests.fakes.waiting import until

CLIENT_A = "127.0.0.2"
CLIENT_B = "127.0.0.3"
PROXY = "127.0.0.1"
CAP = ServerSettings().max_in_flight_per_client  # the default: 2 replies at once per client
FLOOD = 20
REPLY = "Aye, the sea be calm."
TIMEOUT_S = 30.0

Serve = Callable[..., AbstractAsyncContextManager["Server"]]


@dataclass
class Server:
    url: str
    engine: ScriptedEngine
    gate: asyncio.Event

    @asynccontextmanager
    async def client(self, address: str = PROXY) -> AsyncIterator[httpx.AsyncClient]:
        """A client whose connections come from `address` (its peer address on the server)."""
        transport = httpx.AsyncHTTPTransport(local_address=address)
        async with httpx.AsyncClient(
            base_url=self.url, transport=transport, timeout=TIMEOUT_S
        ) as client:
            yield client

    def asked(self, text: str) -> int:
        """How many requests with `text` reached the engine."""
        return sum(text in r.messages[-1].content for r in self.engine.requests)


@pytest.fixture
async def serve(project: Path, settings_for: Callable[..., Settings]) -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []
    apps: list[Runtime] = []
    gates: list[asyncio.Event] = []

    @asynccontextmanager
    async def start(**overrides: object) -> AsyncIterator[Server]:
        gate = asyncio.Event()
        gates.append(gate)
        engine = ScriptedEngine(REPLY, gate=gate)
        app = Runtime.create(settings_for(project, **overrides), engine=engine)
        apps.append(app)
        await app.start(watch=False)
        runner = web.AppRunner(create_http_app(app))
        runners.append(runner)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield Server(f"http://127.0.0.1:{runner.addresses[0][1]}", engine, gate)

    try:
        yield start
    finally:
        for gate in gates:
            gate.set()  # a failed test must not leave replies hanging
        for runner in runners:
            await runner.cleanup()
        for app in apps:
            await app.close()


def chat(text: str, *, stream: bool = True) -> dict[str, object]:
    return {"model": "pirate", "messages": [{"role": "user", "content": text}], "stream": stream}


def assert_rate_limited(response: httpx.Response, max_wait_s: int = 60) -> int:
    assert response.status_code == 429, response.text
    wait = int(response.headers["Retry-After"])
    assert 1 <= wait <= max_wait_s
    error = response.json()["error"]
    assert error["type"] == "rate_limit_exceeded" and error["code"] == 429
    assert "too many requests" in error["message"]
    return wait


def assert_streamed(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(
        c["delta"].get("content") or "" for e in events[:-1] for c in json.loads(e)["choices"]
    )
    assert text == REPLY


def rate_limited_count(metrics_text: str, platform: str = "http") -> float:
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "bots_replies_total"
                and labels.get("outcome") == "rate_limited"
                and labels.get("platform") == platform
            ):
                return sample.value
    return 0.0


@contextmanager
def tasks_cancelled_at_exit(tasks: list[asyncio.Task[httpx.Response]]) -> Iterator[None]:
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()


async def test_flood_from_one_client_is_capped_and_another_client_is_served(
    serve: Serve,
) -> None:
    async with serve() as server, server.client(CLIENT_A) as a, server.client(CLIENT_B) as b:
        flood = [
            asyncio.create_task(a.post("/v1/chat/completions", json=chat(f"Flood {n}?")))
            for n in range(FLOOD)
        ]
        with tasks_cancelled_at_exit(flood):
            await until(lambda: sum(t.done() for t in flood) == FLOOD - CAP, TIMEOUT_S)
            await until(lambda: server.asked("Flood") == CAP, TIMEOUT_S)
            for task in [t for t in flood if t.done()]:
                assert_rate_limited(task.result())

            other = asyncio.create_task(b.post("/v1/chat/completions", json=chat("Calm sea?")))
            await until(lambda: server.asked("Calm sea?") == 1, TIMEOUT_S)
            assert_rate_limited(await a.post("/v1/chat/completions", json=chat("Flood again?")))
            assert server.asked("Flood") == CAP, "no more than the cap ever reached the engine"

            server.gate.set()
            assert_streamed(await other)
            responses = [await t for t in flood]
            assert sorted(r.status_code for r in responses) == [200] * CAP + [429] * (FLOOD - CAP)
            for response in responses:
                if response.status_code == 200:
                    assert_streamed(response)

        assert_streamed(await a.post("/v1/chat/completions", json=chat("Served again?")))
        metrics = (await a.get("/metrics")).text
        assert rate_limited_count(metrics) == FLOOD - CAP + 1


async def test_rate_window_refuses_then_reopens(
    serve: Serve,
) -> None:
    limit, window_s = 3, 3
    settings = {
        "server.rate_limit_requests": limit,
        "server.rate_limit_window_s": window_s,
        "server.max_in_flight_per_client": 0,
    }
    async with serve(**settings) as server, server.client(CLIENT_A) as a:
        server.gate.set()
        async with server.client(CLIENT_B) as b:
            for n in range(limit):
                response = await a.post("/v1/chat/completions", json=chat(f"Ask {n}", stream=False))
                assert response.status_code == 200, response.text
            wait = assert_rate_limited(
                await a.post("/v1/chat/completions", json=chat("One too many", stream=False)),
                max_wait_s=window_s,
            )
            streamed = await a.post("/v1/chat/completions", json=chat("Still too many"))
            assert f"at most {limit} per {window_s}s" in streamed.json()["error"]["message"]
            other = await b.post("/v1/chat/completions", json=chat("Calm sea?", stream=False))
            assert other.json()["choices"][0]["message"]["content"] == REPLY
            await asyncio.sleep(wait)
            again = await a.post("/v1/chat/completions", json=chat("Again?", stream=False))
            assert again.status_code == 200, again.text
        assert server.asked("too many") == 0


async def test_trusted_proxy_names_the_client_and_others_cannot_forge_it(
    serve: Serve,
) -> None:
    async with (
        serve(**{"server.trusted_proxies": f"{PROXY},10.9.0.0/16"}) as server,
        server.client(PROXY) as proxy,
        server.client(CLIENT_A) as direct,
    ):

        def via_proxy(text: str, forwarded: str) -> asyncio.Task[httpx.Response]:
            headers = {"X-Forwarded-For": forwarded}
            request = proxy.post("/v1/chat/completions", json=chat(text), headers=headers)
            return asyncio.create_task(request)

        # Behind two proxies (10.9.0.4 is trusted too); what the client wrote itself on the left
        # changes every time and must not make it a new client.
        flood = [
            via_proxy(f"Proxied {n}?", f"198.51.100.{n}, 203.0.113.7, 10.9.0.4") for n in range(6)
        ]
        # A client connecting directly writes any address it likes: it is still its peer.
        forged = [
            asyncio.create_task(
                direct.post(
                    "/v1/chat/completions",
                    json=chat(f"Forged {n}?"),
                    headers={"X-Forwarded-For": f"203.0.113.{100 + n}"},
                )
            )
            for n in range(6)
        ]
        with tasks_cancelled_at_exit(flood + forged):
            await until(lambda: sum(t.done() for t in flood + forged) == 12 - 2 * CAP, TIMEOUT_S)
            await until(lambda: server.asked("Proxied") == CAP, TIMEOUT_S)
            await until(lambda: server.asked("Forged") == CAP, TIMEOUT_S)
            for task in [t for t in flood + forged if t.done()]:
                assert_rate_limited(task.result())

            other = via_proxy("Calm sea?", "203.0.113.8")
            await until(lambda: server.asked("Calm sea?") == 1, TIMEOUT_S)
            server.gate.set()
            assert_streamed(await other)
            statuses = sorted([(await t).status_code for t in flood + forged])
            assert statuses == [200] * (2 * CAP) + [429] * (12 - 2 * CAP)


async def test_workbench_chat_shares_the_client_limits_and_still_answers(
    serve: Serve,
) -> None:
    async with serve() as server, server.client(CLIENT_A) as page:

        def say(text: str) -> asyncio.Task[httpx.Response]:
            url = "/workbench/personas/pirate/chat"
            return asyncio.create_task(page.post(url, json={"text": text}))

        open_chats = [say(f"Tab {n}?") for n in range(CAP)]
        with tasks_cancelled_at_exit(open_chats):
            await until(lambda: server.asked("Tab") == CAP, TIMEOUT_S)
            third = await say("Third tab?")
            assert third.status_code == 429 and int(third.headers["Retry-After"]) >= 1
            assert "too many requests" in third.json()["error"]
            assert_rate_limited(await page.post("/v1/chat/completions", json=chat("API too?")))
            server.gate.set()
            for response in [await t for t in open_chats]:
                assert response.status_code == 200, response.text
                lines = [json.loads(line) for line in response.text.splitlines()]
                assert lines[-1]["type"] == "done"
                assert "".join(x["text"] for x in lines if x["type"] == "text") == REPLY
        after = await say("After?")
        assert after.status_code == 200
        assert json.loads(after.text.splitlines()[-1])["type"] == "done"
        metrics = (await page.get("/metrics")).text
        assert rate_limited_count(metrics, "web") == 1
        assert rate_limited_count(metrics, "http") == 1


def test_trusted_proxies_must_be_addresses(tmp_path: Path) -> None:
    environ = {"BOTS_SERVER_TRUSTED_PROXIES": "10.0.0.5, 10.1.0.0/16, proxy.local"}
    with pytest.raises(SettingsError, match=r"server\.trusted_proxies: 'proxy\.local'"):
        load_settings(tmp_path, environ=environ)
    settings = load_settings(tmp_path, environ={**environ, "BOTS_SERVER_TRUSTED_PROXIES": "::1"})
    assert settings.server.trusted_proxies == ("::1",)
