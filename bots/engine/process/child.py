"""One model worker process as its supervisor sees it: started, loaded, written to, killed.

`start_worker` runs `python -m bots.engine.process.worker` with an environment and settings
that hold no secret (the worker needs none, and a crash dump or a debugger on it then shows
none), sends the init frame and waits for the model to load. What to do when a worker dies or
hangs is the supervisor's business (bots.engine.process.supervisor), not this module's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bots.engine.base import EngineError, EngineStatus
from bots.engine.process.wire import Frame, FrameError, encode, read_frame
from bots.settings import Settings, secret_environment_names, without_secrets

WORKER_MODULE = "bots.engine.process.worker"
# Loading a large model from a cold disk can take minutes.
LOAD_TIMEOUT_S = 600.0


@dataclass(eq=False)
class WorkerProcess:
    """One worker process and what the supervisor knows of it."""

    proc: asyncio.subprocess.Process
    context_size: int
    model: str
    queue_capacity: int
    started: float
    last_heard: float
    last_polled: float = 0.0
    status: EngineStatus | None = None
    kill_reason: str = ""
    reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def write(self, frame: Frame) -> None:
        """Send a frame; nothing happens when the worker is gone (its reader reports the exit)."""
        stdin = self.proc.stdin
        if stdin is None or stdin.is_closing():
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            stdin.write(encode(frame))

    def kill(self, reason: str) -> None:
        """Kill the process, remembering why; its exit is seen by whoever reads its frames."""
        self.kill_reason = reason
        if self.proc.returncode is None:
            self.proc.kill()


async def start_worker(
    settings: Settings, model_path: Path, *, log_level: int, log_json: bool
) -> WorkerProcess:
    """Start a worker and wait until its model is loaded; EngineError if it cannot load."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        WORKER_MODULE,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=_worker_environment(),
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        init = ("init", without_secrets(settings), model_path, log_level, log_json)
        proc.stdin.write(encode(init))
        async with asyncio.timeout(LOAD_TIMEOUT_S):
            frame = await read_frame(proc.stdout)
    except (TimeoutError, asyncio.IncompleteReadError, FrameError, ConnectionError):
        await _kill(proc)
        raise EngineError(
            f"the model worker {describe_exit(proc.returncode or 0)} while loading the model"
        ) from None
    except BaseException:
        await _kill(proc)
        raise
    if frame[0] != "ready":
        await _kill(proc)
        raise EngineError(str(frame[1]) if len(frame) > 1 else f"unexpected {frame[0]!r}")
    _, context_size, model, queue_capacity = frame
    now = time.monotonic()
    return WorkerProcess(proc, context_size, model, queue_capacity, started=started, last_heard=now)


def describe_exit(returncode: int) -> str:
    """How a process ended, for a log line: "exited with status 2", "was killed by SIGKILL"."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _worker_environment() -> dict[str, str]:
    secret = secret_environment_names()
    return {k: v for k, v in os.environ.items() if k not in secret}


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()
