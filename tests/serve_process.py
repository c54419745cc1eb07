"""Start a real `bots serve` process on a free loopback port for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

READY = re.compile(r"serving the API on (http://[\d.]+:\d+)")
START_TIMEOUT_S = 60.0


@contextmanager
def running_server(
    project: Path, *args: str, env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[str]:
    """Yield the base URL of `bots serve` on the project; SIGTERM it afterwards."""
    log = log or project / "serve.log"
    environment = {
        **os.environ,
        "BOTS_MODEL_N_CTX": "4096",
        "BOTS_MODEL_MAX_TOKENS": "48",
        **(env or {}),
    }
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
                "serve",
                "--host",
                "127.0.0.1",
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
        url = _wait_ready(proc, log)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
