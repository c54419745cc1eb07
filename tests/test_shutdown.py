"""Graceful shutdown of a real `bots serve`: SIGTERM stops taking work, lets the replies under way
finish within the grace period, cuts off the rest with a message saying so, flushes the store
and exits 0 within a bound."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx

from bots.serve import SHUTDOWN_STEP_S
from tests.fakes.projects import persona_md, write
from tests.fakes.waiting import until_now
from tests.serve_process import ONE_THREAD, ServerProcess, StreamReader, start_server

STORY = "Tell me a very long story about a ship, a storm and a lost treasure."


def project(root: Path) -> Path:
    write(root / "personas" / "pirate" / "persona.md", persona_md("You are a pirate.", name="P"))
    return root


def body(text: str, max_tokens: int, user: str = "ann") -> dict[str, object]:
    return {
        "model": "pirate",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "stream": True,
        "user": user,
    }


def assistant_turns(root: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(root / "data" / "conversations.sqlite3") as db:
        rows = db.execute("SELECT status, content FROM turns WHERE role='assistant' ORDER BY id")
        return [(status, content) for status, content in rows]


def stop_and_time(server: ServerProcess) -> tuple[int, float]:
    started = time.monotonic()
    code = server.stop(timeout_s=120)
    return code, time.monotonic() - started


def test_sigterm_finishes_the_reply_under_way_and_refuses_new_work(tmp_path: Path) -> None:
    root = project(tmp_path)
    server = start_server(root, env={**ONE_THREAD, "BOTS_SERVER_SHUTDOWN_GRACE_S": "120"})
    reader = StreamReader(server.url, body(STORY, max_tokens=160))
    reader.start()
    assert reader.first.wait(60)
    server.proc.send_signal(15)
    until_now(
        lambda: httpx.get(server.url + "/healthz", timeout=30).status_code == 503,
        what="the server shutting down",
    )
    refused = httpx.post(
        server.url + "/v1/chat/completions", json=body("Hi", 8, user="bo"), timeout=30
    )
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
    assert "restarting" in refused.json()["error"]["message"]
    health = httpx.get(server.url + "/healthz", timeout=30)
    assert health.status_code == 503 and health.json()["detail"] == "shutting down"
    code, _ = stop_and_time(server)
    reader.join(10)
    assert code == 0 and reader.done
    assert reader.events[-1]["choices"][0]["finish_reason"] in ("stop", "length")  # type: ignore[index]
    assert assistant_turns(root) == [("complete", reader.text)]


def test_sigterm_cuts_off_a_reply_past_the_grace_period_and_says_so(tmp_path: Path) -> None:
    root = project(tmp_path)
    grace = 1.0
    server = start_server(root, env={**ONE_THREAD, "BOTS_SERVER_SHUTDOWN_GRACE_S": str(grace)})
    reader = StreamReader(server.url, body(STORY, max_tokens=2000))
    reader.start()
    assert reader.first.wait(60)
    server.proc.send_signal(15)
    code, took = stop_and_time(server)
    reader.join(10)
    assert code == 0
    assert took < grace + 4 * SHUTDOWN_STEP_S
    errors = [e["error"]["message"] for e in reader.events if "error" in e]  # type: ignore[index]
    assert errors and "shutting down" in errors[0], reader.events[-3:]
    [(status, content)] = assistant_turns(root)
    assert status == "interrupted" and content and reader.text.startswith(content[:20])
    log = server.log.read_text()
    assert "shutting down: 1 replies in flight" in log and "stopped" in log
