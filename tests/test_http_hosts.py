"""Without an API token, every HTTP endpoint answers only requests addressed to the server itself.

A DNS-rebinding page reaches a loopback server under a name it controls; its requests carry that
name in `Host`. The real `bots serve` app (API, status, metrics, health, workbench) runs on
127.0.0.1 in front of a real app without the model: the refusal comes before any handler, and
the allowed requests here need no generation (a strict persona declines an off-topic question).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bots.adapters.http.api import create_http_app
from bots.runtime import Runtime
from bots.settings import Settings, SettingsError

Client = TestClient[web.Request, web.Application]
TOKEN = "hosts-test-token-0123456789"
OFF_TOPIC = "Who won the 1998 football world cup?"
FOREIGN = "rebound.example"
COMPLETION = {"model": "librarian", "messages": [{"role": "user", "content": OFF_TOPIC}]}
# Every route of the app: (method, path, JSON body).
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", COMPLETION),
    ("GET", "/healthz", None),
    ("GET", "/status", None),
    ("GET", "/metrics", None),
    ("GET", "/", None),
    ("GET", "/workbench/login", None),
    ("POST", "/workbench/login", {"token": "x"}),
    ("GET", "/workbench/events", None),
    ("GET", "/workbench/personas/librarian/about", None),
    ("GET", "/workbench/personas/librarian/evals", None),
    ("POST", "/workbench/personas/librarian/evals/run", {}),
    ("GET", "/workbench/personas/librarian/feedback", None),
    ("GET", "/workbench/personas/librarian/retrieve?q=vacation", None),
    ("POST", "/workbench/personas/librarian/chat", {"text": OFF_TOPIC}),
    ("POST", "/workbench/personas/librarian/reset", {}),
    ("GET", "/workbench/static/workbench.js", None),
]
# Endpoints that answer at once (no event stream, no eval run) when the host is allowed.
QUICK = [e for e in ENDPOINTS if e[1] not in ("/workbench/events",) and "evals/run" not in e[1]]


@pytest.fixture
def start(
    project: Path, settings_for: Callable[..., Settings]
) -> Callable[..., AsyncIterator[Client]]:
    async def begin(**overrides: object) -> AsyncIterator[Client]:
        app = Runtime.create(settings_for(project, **overrides))
        await app.start(load_model=False)
        client = TestClient(TestServer(create_http_app(app), host="127.0.0.1"))
        await client.start_server()
        try:
            yield client
        finally:
            await client.close()
            await app.close()

    return begin


@pytest.fixture
async def client(start: Callable[..., AsyncIterator[Client]]) -> AsyncIterator[Client]:
    async for started in start():
        yield started


async def call(client: Client, endpoint: tuple[str, str, Any], host: str, **headers: str) -> Any:
    method, path, body = endpoint
    response = await client.request(method, path, json=body, headers={"Host": host, **headers})
    streams = response.headers.get("Content-Type", "").startswith("text/event-stream")
    text = "" if streams else await response.text()
    response.close()
    return response.status, text, response.headers.get("Content-Type", "")


async def test_every_endpoint_refuses_a_foreign_host_without_a_token(client: Client) -> None:
    for endpoint in ENDPOINTS:
        status, text, content_type = await call(client, endpoint, f"{FOREIGN}:{client.port}")
        assert status == 403, endpoint
        if endpoint[1].startswith("/v1/"):
            error = json.loads(text)["error"]
            assert error["type"] == "permission_error" and error["code"] == 403
            text = error["message"]
        else:
            assert content_type.startswith("text/plain"), endpoint
        assert repr(FOREIGN) in text and "server.allowed_hosts" in text, endpoint
        assert "BOTS_API_TOKEN" in text, endpoint


async def test_the_servers_own_names_and_addresses_are_answered(client: Client) -> None:
    for host in ("127.0.0.1", "localhost", "LOCALHOST.", "app.localhost", "[::1]", "192.168.1.2"):
        for endpoint in QUICK:
            status, text, _ = await call(client, endpoint, f"{host}:{client.port}")
            assert status != 403, (host, endpoint, text)
        status, text, _ = await call(client, ENDPOINTS[1], host)
        reply = json.loads(text)["choices"][0]["message"]["content"]
        assert status == 200 and "don't know" in reply, host
    status, _, _ = await call(client, ENDPOINTS[8], "localhost")
    assert status == 200, "the event stream too"


async def test_names_in_allowed_hosts_are_answered(
    start: Callable[..., AsyncIterator[Client]],
) -> None:
    allowed = {"server.allowed_hosts": "bots.example.com,.corp.example"}
    async for client in start(**allowed):
        for host in ("bots.example.com", "BOTS.example.com.", "corp.example", "wiki.corp.example"):
            assert (await call(client, ENDPOINTS[3], host))[0] == 200, host
        for host in ("example.com", "notbots.example.com", "xcorp.example", FOREIGN):
            assert (await call(client, ENDPOINTS[3], host))[0] == 403, host


async def test_the_configured_server_host_is_answered(
    start: Callable[..., AsyncIterator[Client]],
) -> None:
    async for client in start(**{"server.host": "botbox"}):
        assert (await call(client, ENDPOINTS[3], "botbox:8321"))[0] == 200
        assert (await call(client, ENDPOINTS[3], "botbox.evil.example"))[0] == 403


async def test_with_a_token_the_token_decides_whatever_the_host(
    start: Callable[..., AsyncIterator[Client]],
) -> None:
    async for client in start(**{"server.api_token": TOKEN}):
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert (await call(client, ENDPOINTS[3], FOREIGN, **bearer))[0] == 200
        assert (await call(client, ENDPOINTS[1], FOREIGN, **bearer))[0] == 200
        assert (await call(client, ENDPOINTS[3], FOREIGN))[0] == 401
        assert (await call(client, ENDPOINTS[5], FOREIGN))[0] == 401  # the sign-in page


@pytest.mark.parametrize("name", ["http://bots.example.com", "bots.example.com:8321", "a b", "*"])
def test_a_malformed_allowed_host_is_an_error_naming_the_setting(
    project: Path, settings_for: Callable[..., Settings], name: str
) -> None:
    with pytest.raises(SettingsError, match=r"server\.allowed_hosts: .* is not a host name"):
        settings_for(project, **{"server.allowed_hosts": name})
