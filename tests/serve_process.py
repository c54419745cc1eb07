"""Start a real `bots serve` process on a free loopback port for end-to-end tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

READY = re.compile(r"serving the API on (http://[\d.]+:\d+)")
START_TIMEOUT_S = 60.0
# One model thread: llama.cpp's spinning thread barriers crawl on an oversubscribed machine.
ONE_THREAD = {"BOTS_MODEL_N_THREADS": "1"}


@dataclass
class ServerProcess:
    """A `bots serve` process started for a test."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def worker_pids(self) -> list[int]:
        """The server's child processes (its model worker)."""
        pids = []
        for children in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            try:
                pids += [int(pid) for pid in children.read_text().split()]
            except OSError:
                continue
        return pids

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait (SIGKILL after `timeout_s`); the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start_server(
    project: Path,
    *args: str,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    host: str | None = "127.0.0.1",
    verbose: int = 0,
) -> ServerProcess:
    """Start `bots serve` on the project on a free port and wait until it answers.

    Secret settings passed in `env` are registered with the session's secret scan.
    """
    from bots.settings import secret_environment_names
    from tests.secret_scan import register_secret

    secret_names = secret_environment_names()
    register_secret(*(v for k, v in (env or {}).items() if k in secret_names))
    log = log or project / "serve.log"
    environment = {
        **os.environ,
        "BOTS_MODEL_N_CTX": "4096",
        "BOTS_MODEL_MAX_TOKENS": "48",
        **(env or {}),
    }
    where = ["--host", host] if host is not None else []
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bots",
                "--personas",
                str(project / "personas"),
                "--knowledge",
                str(project / "knowledge"),
                "--data-dir",
                str(project / "data"),
                *(["-" + "v" * verbose] if verbose else []),
                "serve",
                *where,
                "--port",
                "0",
                *args,
            ],
            cwd=project,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    try:
        return ServerProcess(proc, _wait_ready(proc, log), log)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


@contextmanager
def running_server(
    project: Path, *args: str, env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[str]:
    """Yield the base URL of `bots serve` on the project; SIGTERM it afterwards."""
    server = start_server(project, *args, env=env, log=log)
    try:
        yield server.url
    finally:
        server.stop()


def _wait_ready(proc: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        match = READY.search(log.read_text(errors="replace"))
        if match:
            url = match.group(1)
            httpx.get(url + "/healthz", timeout=10)
            return url
        if proc.poll() is not None:
            raise RuntimeError(f"bots serve exited {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.1)
    raise RuntimeError(f"bots serve did not start:\n{log.read_text()}")


class StreamReader(threading.Thread):
    """Reads an SSE reply in the background; `first` is set at the first piece of text."""

    def __init__(self, url: str, request: dict[str, object]) -> None:
        super().__init__(daemon=True)
        self.url, self.request = url, request
        self.first = threading.Event()
        self.text = ""
        self.events: list[dict[str, object]] = []
        self.done = False
        self.error: httpx.HTTPError | None = None

    def run(self) -> None:
        try:
            self._read()
        except httpx.HTTPError as exc:  # the server went away mid-reply (a test killed it)
            self.error = exc

    def _read(self) -> None:
        with httpx.stream(
            "POST", self.url + "/v1/chat/completions", json=self.request, timeout=120
        ) as r:
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    self.done = True
                elif line.startswith("data: "):
                    event = json.loads(line[6:])
                    self.events.append(event)
                    for choice in event.get("choices", []):
                        self.text += choice["delta"].get("content") or ""
                    if self.text:
                        self.first.set()
