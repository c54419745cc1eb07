"""`bots serve` as a whole under faults: kill -9 mid-reply and restart (nothing earlier lost, the
interrupted turn marked, no duplicate reply), its model worker killed mid-reply (that reply says
so, /healthz dips, the model comes back), a model that cannot come back (exit non-zero for the
service manager), and a model that cannot load at all (a clear message, exit non-zero)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from bots.chat.model import Turn
from bots.engine.model_files import default_model_path
from bots.serve import EXIT_ENGINE_FAILED
from bots.store.sqlite_file import SqliteFile
from tests.fakes.projects import persona_md, write
from tests.serve_process import ONE_THREAD, StreamReader, start_server

EXIT_BOUND_S = 60.0


def project(root: Path) -> Path:
    write(root / "personas" / "pirate" / "persona.md", persona_md("You are a pirate.", name="P"))
    return root


def ask(url: str, text: str, max_tokens: int = 16) -> str:
    body = {
        "model": "pirate",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "user": "ann",
        "seed": 1,
    }
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def stored_turns(root: Path) -> list[Turn]:
    store = SqliteFile(root / "data" / "conversations.sqlite3")
    try:
        return store.turns(store.conversation_id("http", "ann/pirate"))
    finally:
        store.close()


def gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return True
    return status == "Z"


def wait_gone(pids: list[int], limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not all(gone(pid) for pid in pids):
        assert time.monotonic() < deadline, f"processes {pids} still running"
        time.sleep(0.05)


def test_kill_9_mid_reply_then_restart_keeps_every_earlier_turn(tmp_path: Path) -> None:
    root = project(tmp_path)
    server = start_server(root, env=ONE_THREAD)
    answers = [ask(server.url, "Who are you?"), ask(server.url, "Where is your ship?")]
    workers = server.worker_pids()
    assert len(workers) == 1
    reader = StreamReader(
        server.url,
        {
            "model": "pirate",
            "messages": [{"role": "user", "content": "Tell me a very long story."}],
            "max_tokens": 2000,
            "stream": True,
            "user": "ann",
        },
    )
    reader.start()
    assert reader.first.wait(60)
    server.proc.kill()
    server.proc.wait()
    reader.join(10)
    assert reader.error is not None and not reader.done  # the reply was cut mid-stream
    wait_gone(workers, 10)  # the worker sees its supervisor gone and exits

    restarted = start_server(root, env=ONE_THREAD, log=tmp_path / "restarted.log")
    try:
        # Answered after the restart: had the restart answered the interrupted message again,
        # that would have been stored by now.
        assert ask(restarted.url, "And now?")
    finally:
        assert restarted.stop() == 0
    turns = stored_turns(root)
    assert [(t.role, t.status) for t in turns] == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("user", "complete"),
        ("assistant", "complete"),
        ("user", "complete"),
        ("assistant", "interrupted"),
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert [turns[1].content, turns[3].content] == answers


def test_worker_killed_mid_reply_that_reply_says_so_health_dips_and_recovers(
    tmp_path: Path,
) -> None:
    root = project(tmp_path)
    server = start_server(root, env=ONE_THREAD)
    try:
        reader = StreamReader(
            server.url,
            {
                "model": "pirate",
                "messages": [{"role": "user", "content": "Tell me a very long story."}],
                "max_tokens": 2000,
                "stream": True,
                "user": "ann",
            },
        )
        reader.start()
        assert reader.first.wait(60)
        [worker] = server.worker_pids()
        os.kill(worker, signal.SIGKILL)
        reader.join(10)
        errors = [e["error"]["message"] for e in reader.events if "error" in e]  # type: ignore[index]
        assert errors and "restarting" in errors[0] and reader.done
        health = httpx.get(server.url + "/healthz", timeout=30)
        assert health.status_code == 503 and "restarting" in health.json()["detail"]
        deadline = time.monotonic() + EXIT_BOUND_S
        while httpx.get(server.url + "/healthz", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "the model did not come back"
            time.sleep(0.1)
        assert ask(server.url, "Still there?")
        status = httpx.get(server.url + "/status", timeout=10).json()["engine"]
        assert status["healthy"] and "restarts 1" in status["detail"]
    finally:
        assert server.stop() == 0
    turns = stored_turns(root)
    assert [t.status for t in turns if t.role == "assistant"] == ["interrupted", "complete"]
    assert turns[1].content and reader.text.startswith(turns[1].content[:20])


def test_serve_exits_non_zero_when_the_model_cannot_be_brought_back(tmp_path: Path) -> None:
    root = project(tmp_path)
    model = tmp_path / "model.gguf"
    shutil.copy(default_model_path(), model)
    server = start_server(
        root,
        env={
            **ONE_THREAD,
            "BOTS_MODEL_PATH": str(model),
            "BOTS_MODEL_MAX_RESTARTS": "1",
            "BOTS_MODEL_ENGINE": "simple",
        },
    )
    with model.open("r+b") as f:
        f.truncate(model.stat().st_size // 2)
    [worker] = server.worker_pids()
    os.kill(worker, signal.SIGKILL)
    try:
        code = server.proc.wait(EXIT_BOUND_S)
    finally:
        server.stop()
    assert code == EXIT_ENGINE_FAILED
    assert "could not be brought back" in server.log.read_text()


def test_serve_with_an_unreadable_model_says_why_and_exits_non_zero(tmp_path: Path) -> None:
    root = project(tmp_path)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match="exited 1") as failure:
        start_server(root, env={"BOTS_MODEL_PATH": str(broken)})
    assert "the model could not be started" in str(failure.value)
    assert "broken.gguf" in str(failure.value)
