"""Bad input to the HTTP API: random JSON and byte bodies give clear 4xx errors, never a crash."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bots.adapters.http.api import create_http_app
from bots.runtime import Runtime

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "tool", 3, None]),
        "content": st.one_of(st.text(max_size=200), st.integers(), st.none(), JSON),
    }
)
BODY = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {
            "model": st.sampled_from(["pirate", "nobody", "", 7, None]),
            "messages": st.one_of(st.lists(MESSAGE, max_size=4), JSON),
        },
        optional={
            "stream": JSON,
            "temperature": JSON,
            "max_tokens": JSON,
            "user": JSON,
            "seed": JSON,
            "max_completion_tokens": JSON,
        },
    ),
)


@pytest.fixture
async def client(app: Runtime) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_http_app(app))) as test_client:
        yield test_client


async def test_fuzzed_bodies_get_clear_answers(client: TestClient[Any, Any]) -> None:
    statuses: list[int] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(BODY)
    def check(body: object) -> None:
        bodies.append(body)

    bodies: list[object] = []
    check()
    for body in bodies:
        if isinstance(body, dict) and body.get("model") == "pirate":
            body["max_tokens"] = 1  # keep the well-formed ones quick
        response = await client.post("/v1/chat/completions", data=json.dumps(body))
        statuses.append(response.status)
        payload = await response.read()
        assert response.status < 500, (body, payload[:300])
        if response.status >= 400:
            assert json.loads(payload)["error"]["message"]
    raw = [b"", b"{", b"\xff\xfe", b"[]", b"null", b'{"model": "pirate", "messages": "\x00"}']
    for data in raw:
        response = await client.post("/v1/chat/completions", data=data)
        assert response.status == 400
    assert (await client.get("/healthz")).status == 200
    assert 400 in statuses


async def test_huge_body_is_refused(client: TestClient[Any, Any]) -> None:
    response = await client.post("/v1/chat/completions", data=b"x" * 2_000_000)
    assert response.status == 413


async def test_message_longer_than_the_context_is_answered(client: TestClient[Any, Any]) -> None:
    text = "Tell me about ships. " * 4000  # ~20k tokens against a 4k window
    body = {"model": "pirate", "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status == 200, await response.text()
    assert (await response.json())["usage"]["prompt_tokens"] < 4096
