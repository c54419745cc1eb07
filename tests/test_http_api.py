"""The OpenAI-compatible API against a real `bots serve` on 127.0.0.1, with the openai client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.projects import write_project
from tests.fakes.waiting import until_now
from tests.serve_process import running_server


@pytest.fixture(scope="module")
def api_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_project(tmp_path_factory.mktemp("api-project"))


@pytest.fixture(scope="module")
def server(api_project: Path) -> Iterator[str]:
    """One `bots serve` for the module (starting one takes seconds); each test leaves the
    project as it found it."""
    with running_server(api_project) as url:
        yield url


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def test_models_lists_one_model_per_persona(client: openai.OpenAI) -> None:
    assert sorted(m.id for m in client.models.list()) == ["librarian", "pirate"]


def test_non_streaming_completion_with_sources(server: str) -> None:
    body = {
        "model": "librarian",
        "messages": [{"role": "user", "content": "How many vacation days do employees get?"}],
        "temperature": 0,
    }
    data = httpx.post(server + "/v1/chat/completions", json=body, timeout=120).json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["content"].strip()
    assert data["sources"][0]["path"] == "handbook/vacation.md"
    assert data["usage"]["completion_tokens"] > 0


def test_streaming_completion_with_the_openai_client(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="pirate",
        messages=[{"role": "user", "content": "Say hello."}],
        stream=True,
        max_tokens=16,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 3 and text.strip()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_unknown_persona_and_bad_request(server: str, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nobody", messages=[{"role": "user", "content": "hi"}])
    bad = httpx.post(server + "/v1/chat/completions", json={"model": "pirate"}, timeout=10)
    assert bad.status_code == 400 and "messages" in bad.json()["error"]["message"]
    assert httpx.post(server + "/v1/chat/completions", content=b"{", timeout=10).status_code == 400


def test_strict_persona_declines_without_relevant_documents(server: str) -> None:
    body = {
        "model": "librarian",
        "messages": [{"role": "user", "content": "Who won the 1998 football world cup?"}],
    }
    data = httpx.post(server + "/v1/chat/completions", json=body, timeout=120).json()
    assert data["sources"] == []
    assert "don't know" in data["choices"][0]["message"]["content"]


def test_conversation_with_user_field_is_remembered(server: str) -> None:
    def ask(text: str) -> dict[str, object]:
        body = {
            "model": "pirate",
            "user": "alice",
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 8,
        }
        return httpx.post(server + "/v1/chat/completions", json=body, timeout=120).json()

    ask("My name is Alice.")
    second = ask("What is my name?")
    assert second["usage"]["prompt_tokens"] > 30  # type: ignore[index]


def test_status_shows_a_reload_error_and_health(server: str, api_project: Path) -> None:
    assert httpx.get(server + "/healthz", timeout=10).json()["ok"] is True
    path = api_project / "personas" / "pirate" / "persona.md"
    original = path.read_text()
    path.write_text("---\nname: Pete\nunknown_key: 1\n---\nArr.\n")

    def pirate_with_errors() -> tuple[dict[str, Any], dict[str, Any]] | None:
        status = httpx.get(server + "/status", timeout=10).json()
        pirate = next(p for p in status["personas"] if p["id"] == "pirate")
        return (status, pirate) if pirate["errors"] else None

    status, pirate = until_now(pirate_with_errors, what="the reload error shown")
    assert pirate["loaded"] is True
    [error] = pirate["errors"]
    assert (error["path"], error["line"], error["key"]) == (str(path), 3, "unknown_key")
    assert status["engine"]["queue_capacity"] > 0
    assert status["indexes"]["knowledge/handbook"]["documents"] == 3
    librarian = next(p for p in status["personas"] if p["id"] == "librarian")
    assert librarian["index"] == {"documents": 3, "chunks": 3}
    path.write_text(original)  # the fix
    until_now(
        lambda: (
            not any(
                p["errors"] for p in httpx.get(server + "/status", timeout=10).json()["personas"]
            )
        ),
        what="the reload error cleared",
    )
