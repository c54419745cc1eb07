"""A real `bots serve` with the security settings on, at debug log level: the HTTP API's locks
(loopback by default, bearer token, request size limit, CORS closed), abuse (a full queue, a
message longer than the context) and, at the end, no secret in its debug log."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.projects import HANDBOOK, persona_md, write
from tests.secret_scan import find_leaks, register_secret
from tests.serve_process import ONE_THREAD, ServerProcess, start_server

API_TOKEN = "api-token-0123456789-abcdef"
WRONG_TOKEN = "wrong-token-9876543210-zyxw"
MAX_REQUEST_BYTES = 100_000
N_CTX = 1024
# Long enough to exceed the context many times over, short enough for the size limit.
LONG_MESSAGE = "Tell me about the sea and the ships on it. " * 1_500
PROTECTED = ("/v1/models", "/status", "/metrics")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    project = tmp_path_factory.mktemp("ops-http")
    for name, text in HANDBOOK.items():
        write(project / "knowledge" / "handbook" / name, text)
    write(project / "personas" / "pirate" / "persona.md", persona_md("You are a pirate.", name="P"))
    register_secret(WRONG_TOKEN)
    server = start_server(
        project,
        host=None,  # the default bind address
        verbose=2,
        env={
            **ONE_THREAD,
            "BOTS_MODEL_N_CTX": str(N_CTX),
            "BOTS_API_TOKEN": API_TOKEN,
            "BOTS_SERVER_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
            "BOTS_MODEL_QUEUE_SIZE": "1",
            "BOTS_MODEL_PARALLEL": "1",
            # One client fills the engine's queue here: no per-client cap in front of it.
            "BOTS_SERVER_MAX_IN_FLIGHT_PER_CLIENT": "0",
        },
    )
    try:
        yield server
    finally:
        server.stop()


def auth(token: str = API_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def chat(text: str, **extra: object) -> dict[str, object]:
    return {"model": "pirate", "messages": [{"role": "user", "content": text}], **extra}


def test_binds_to_loopback_by_default(server: ServerProcess) -> None:
    assert server.url.startswith("http://127.0.0.1:")


def test_bearer_token_guards_everything_but_health(server: ServerProcess) -> None:
    for path in PROTECTED:
        assert httpx.get(server.url + path, timeout=10).status_code == 401
        assert (
            httpx.get(server.url + path, headers=auth(WRONG_TOKEN), timeout=10).status_code == 401
        )
        assert httpx.get(server.url + path, headers=auth(), timeout=10).status_code == 200
    refused = httpx.post(server.url + "/v1/chat/completions", json=chat("Hi"), timeout=10)
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
    assert httpx.get(server.url + "/healthz", timeout=30).status_code == 200


def test_request_over_the_size_limit_is_refused(server: ServerProcess) -> None:
    body = chat("x" * (MAX_REQUEST_BYTES + 1))
    response = httpx.post(
        server.url + "/v1/chat/completions", json=body, headers=auth(), timeout=30
    )
    assert response.status_code == 413


def test_cors_is_closed_by_default(server: ServerProcess) -> None:
    origin = {"Origin": "https://evil.example"}
    response = httpx.get(server.url + "/v1/models", headers={**auth(), **origin}, timeout=10)
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    preflight = httpx.options(
        server.url + "/v1/chat/completions",
        headers={**origin, "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_message_longer_than_the_context_is_answered(server: ServerProcess) -> None:
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json=chat(LONG_MESSAGE, max_tokens=8),
        headers=auth(),
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    assert response.json()["usage"]["prompt_tokens"] < N_CTX


async def test_full_queue_answers_503_with_retry_after_and_recovers(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=auth(), timeout=120) as client:
        responses = await asyncio.gather(
            *(
                client.post("/v1/chat/completions", json=chat(f"Tell me a tale {i}", max_tokens=48))
                for i in range(6)
            )
        )
        busy = [r for r in responses if r.status_code == 503]
        assert busy, [r.status_code for r in responses]
        assert all(int(r.headers["Retry-After"]) > 0 for r in busy)
        assert all(r.json()["error"]["type"] == "server_busy" for r in busy)
        assert all(r.status_code in (200, 503) for r in responses)
        again = await client.post("/v1/chat/completions", json=chat("Ahoy?", max_tokens=8))
        assert again.status_code == 200


def test_debug_log_holds_no_secret(server: ServerProcess) -> None:
    httpx.post(
        server.url + "/v1/chat/completions",
        json=chat("Hi", max_tokens=4),
        headers=auth(),
        timeout=60,
    )
    text = server.log.read_text()
    assert " DEBUG " in text and "reply persona=pirate" in text
    assert find_leaks([server.log], [API_TOKEN, WRONG_TOKEN]) == []


def test_status_names_personas_engine_and_adapters(server: ServerProcess) -> None:
    from click.testing import CliRunner

    from bots.cli import main

    result = CliRunner().invoke(
        main, ["status", "--url", server.url], env={"BOTS_API_TOKEN": API_TOKEN}
    )
    assert result.exit_code == 0, result.output
    assert "healthy=True" in result.output and "queue 0/1" in result.output
    assert "adapter http: http://127.0.0.1:" in result.output
    assert "pirate" in result.output and "last reload" in result.output
    assert API_TOKEN not in result.output
