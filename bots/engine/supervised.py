"""The supervised engine: the local model in a child process, behind the same Engine API.

A native crash in llama.cpp kills its whole process. So the model lives in a worker process
(bots.engine.worker_process) that runs the engine `make_engine` builds, with isolation off, and
streams pieces back over a pipe. This side:

- sends each request to the worker and hands its pieces to the caller (`engine.stream`);
- counts tokens itself, with the model's vocabulary alone (no weights), so prompt building never
  waits on the worker;
- watches the worker: when it exits (a crash, the OOM killer) or makes no progress for
  `model.watchdog_s` while it has work, the replies that had begun end with a short error, the
  requests that had not begun are sent again once, and a new worker is started after a backoff;
- gives up after `model.max_restarts` restarts within `model.restart_window_s`: every caller gets
  an error and `wait_failed()` returns, so `bots serve` exits non-zero and its service manager
  restarts it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bots.engine.base import (
    EngineBusy,
    EngineError,
    EngineStatus,
    EngineTimeout,
    GenerationRequest,
    Piece,
    read_pieces,
)
from bots.engine.worker_process import Frame, FrameError, encode, read_frame
from bots.settings import ALIASES, Settings

log = logging.getLogger(__name__)

WORKER_MODULE = "bots.engine.worker_process"
# Waits before each restart attempt in a row; the last one repeats.
RESTART_BACKOFF_S = (0.2, 1.0, 2.0, 5.0, 10.0)
# Loading a large model from a cold disk can take minutes.
LOAD_TIMEOUT_S = 600.0
# How often the worker is asked for its status (which is also how an idle hang shows).
STATUS_POLL_S = 2.0
WATCHDOG_TICK_S = 0.25
# A watchdog tick this late means this process, not the worker, was stuck.
STALL_S = 1.0
STOP_TIMEOUT_S = 10.0
# The worker enforces each request's timeout; this guard only covers a worker that went silent.
TIMEOUT_MARGIN_S = 5.0
CRASHED = "the model stopped while writing this reply and is restarting; please ask again"
SHUTTING_DOWN = "the bot is shutting down, so this reply was cut short; please ask again shortly"
NOT_STARTED = "the engine is not started"


@dataclass(eq=False)
class _Call:
    """One caller's request, from `stream()` until the caller lets go of it."""

    rid: int
    request: GenerationRequest
    out: asyncio.Queue[Piece | BaseException] = field(default_factory=asyncio.Queue)
    worker: _Worker | None = None  # where it was sent; None while it waits for a worker
    heard: bool = False  # the worker answered it (a piece or an error)
    finished: bool = False  # the last piece or an error is queued for the caller
    resent: bool = False


@dataclass(eq=False)
class _Worker:
    """One worker process and what this side knows of it."""

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


class _Vocab:
    """The model's tokenizer alone: llama.cpp loads the vocabulary and no weights."""

    def __init__(self, path: Path) -> None:
        import llama_cpp

        from bots.engine.llama_log import route_llama_logs

        route_llama_logs()
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        # No weights are placed, but keep the AMX-safe choice of bots.engine.model_files.
        params.use_extra_bufts = False
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise EngineError(f"{path}: llama.cpp could not read the model's vocabulary")
        self._lib = llama_cpp
        self._model = model
        self._vocab = llama_cpp.llama_model_get_vocab(model)

    def count(self, text: str) -> int:
        data = text.encode()
        capacity = len(data) + 8  # a token is at least one byte, plus room for specials
        buf = (self._lib.llama_token * capacity)()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, capacity, False, False)
        return abs(int(n))

    def close(self) -> None:
        self._lib.llama_model_free(self._model)


def worker_settings(settings: Settings) -> Settings:
    """What the worker is told: the same settings with isolation off and every secret blank."""
    sections: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            blank = {s.name: _default(s) for s in dataclasses.fields(value) if not s.repr}
            sections[f.name] = dataclasses.replace(value, **blank)
    sections["model"] = dataclasses.replace(sections["model"], isolate=False)
    return dataclasses.replace(settings, **sections)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def secret_environment_names() -> set[str]:
    """Environment variables that may hold a secret setting (`BOTS_SLACK_BOT_TOKEN`, ...)."""
    names = set()
    defaults = Settings()
    for f in dataclasses.fields(defaults):
        section = getattr(defaults, f.name)
        if dataclasses.is_dataclass(section):
            names |= {
                f"BOTS_{f.name}_{s.name}".upper() for s in dataclasses.fields(section) if not s.repr
            }
    names |= {alias for alias, (s, k) in ALIASES.items() if f"BOTS_{s}_{k}".upper() in names}
    return names


def _worker_environment() -> dict[str, str]:
    secret = secret_environment_names()
    return {k: v for k, v in os.environ.items() if k not in secret}


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


class SupervisedEngine:
    """An Engine whose model runs in a supervised worker process (see the module docstring)."""

    def __init__(self, settings: Settings, model_path: Path) -> None:
        model = settings.model
        self.model_path = model_path
        self.restarts = 0
        self._settings = worker_settings(settings)
        self._log_json = settings.server.log_json
        self._watchdog_s = model.watchdog_s
        self._max_restarts = model.max_restarts
        self._window_s = model.restart_window_s
        # The worker refuses past its own queue; this bounds what waits here during a restart.
        self._capacity = model.queue_size + model.parallel
        self._context_size = model.n_ctx
        self._queue_capacity = model.queue_size
        self._model_name = model_path.name
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count(1)
        self._worker: _Worker | None = None
        self._vocab: _Vocab | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._restart_times: collections.deque[float] = collections.deque()
        self._last_progress = 0.0
        self._detail = "not started"
        self._fatal = ""
        self._failed = asyncio.Event()
        self._closing = False

    # -- the Engine protocol ----------------------------------------------------------------

    @property
    def context_size(self) -> int:
        return self._context_size

    def count_tokens(self, text: str) -> int:
        if self._vocab is None:
            raise EngineError(NOT_STARTED)
        return self._vocab.count(text)

    async def start(self) -> None:
        """Read the vocabulary, start the worker and wait until its model is loaded.

        A model that cannot be loaded at start is a configuration error: no retry, EngineError.
        """
        if self._worker is not None:
            return
        self._closing = False
        self._detail = "loading the model"
        vocab = await asyncio.to_thread(_Vocab, self.model_path)
        try:
            await self._spawn()
        except BaseException:
            vocab.close()
            raise
        self._vocab = vocab
        self._keep(self._watch())

    async def close(self) -> None:
        """Stop the worker; replies still running end with an error saying the bot stops."""
        if self._closing:
            return
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for call in self._calls.values():
            self._end(call, EngineError(SHUTTING_DOWN))
        worker, self._worker = self._worker, None
        if worker is not None:
            self._write(worker, ("stop",))
            try:
                await asyncio.wait_for(worker.proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("the model worker (pid %d) did not stop; killing it", worker.pid)
                worker.proc.kill()
                await worker.proc.wait()
            if worker.reader is not None:
                await worker.reader
        if self._vocab is not None:
            self._vocab.close()
            self._vocab = None
        self._detail = "closed"

    def status(self) -> EngineStatus:
        calls = list(self._calls.values())
        worker = self._worker
        if self._fatal:
            detail = self._fatal
        elif worker is not None:
            detail = f"worker pid {worker.pid}, restarts {self.restarts}"
            if worker.status is not None and worker.status.detail:
                detail += f"; {worker.status.detail}"
        else:
            detail = self._detail
        return EngineStatus(
            model=worker.model if worker else self._model_name,
            queue_depth=sum(1 for c in calls if not c.heard),
            queue_capacity=self._queue_capacity,
            active=sum(1 for c in calls if c.heard and not c.finished),
            healthy=worker is not None and not self._fatal and not self._closing,
            detail=detail,
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        """Stream the reply from the worker; closing the iterator early cancels it there."""
        if self._fatal:
            raise EngineError(self._fatal)
        if self._closing or self._vocab is None:
            raise EngineError(NOT_STARTED)
        if len(self._calls) >= self._capacity:
            raise EngineBusy()
        call = _Call(next(self._ids), request)
        self._calls[call.rid] = call
        self._send(call)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.timeout_s + TIMEOUT_MARGIN_S
        try:
            async for item in read_pieces(call.out, deadline, request.timeout_s):
                yield item
        finally:
            del self._calls[call.rid]
            worker = call.worker
            if worker is not None and worker is self._worker and not call.finished:
                self._write(worker, ("cancel", call.rid))

    # -- supervision -------------------------------------------------------------------------

    @property
    def worker_pid(self) -> int | None:
        """The worker's process id while one is up (for operators and tests)."""
        return self._worker.pid if self._worker is not None else None

    async def wait_failed(self) -> str:
        """Return (with the reason) once the worker cannot be brought back."""
        await self._failed.wait()
        return self._fatal

    def _keep(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn(self) -> None:
        """Start a worker and wait for its model; EngineError if it cannot load."""
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
            level = logging.getLogger().getEffectiveLevel()
            proc.stdin.write(encode(("init", self._settings, level, self._log_json)))
            async with asyncio.timeout(LOAD_TIMEOUT_S):
                frame = await read_frame(proc.stdout)
        except (TimeoutError, asyncio.IncompleteReadError, FrameError, ConnectionError):
            await _kill(proc)
            raise EngineError(
                f"the model worker {_describe_exit(proc.returncode or 0)} while loading the model"
            ) from None
        except BaseException:
            await _kill(proc)
            raise
        if frame[0] != "ready":
            await _kill(proc)
            raise EngineError(str(frame[1]) if len(frame) > 1 else f"unexpected {frame[0]!r}")
        _, context_size, model, queue_capacity = frame
        now = time.monotonic()
        worker = _Worker(proc, context_size, model, queue_capacity, started=now, last_heard=now)
        self._worker = worker
        self._context_size = context_size
        self._model_name = model
        self._queue_capacity = queue_capacity
        self._last_progress = now
        worker.reader = asyncio.create_task(self._read(worker))
        log.info("model worker pid %d ready in %.1fs", proc.pid, now - started)
        for call in self._calls.values():
            if call.worker is None and not call.finished:
                self._send(call)

    def _send(self, call: _Call) -> None:
        worker = self._worker
        if worker is None:
            return  # sent when the next worker is ready
        if not self._busy(worker):
            self._last_progress = time.monotonic()  # the watchdog counts from the start of work
        call.worker = worker
        self._write(worker, ("gen", call.rid, call.request))

    def _write(self, worker: _Worker, frame: Frame) -> None:
        stdin = worker.proc.stdin
        if stdin is None or stdin.is_closing():
            return
        # A worker that is gone cannot be written to; its reader reports the exit.
        with contextlib.suppress(ConnectionError, RuntimeError):
            stdin.write(encode(frame))

    def _busy(self, worker: _Worker) -> bool:
        return any(c.worker is worker and not c.finished for c in self._calls.values())

    def _end(self, call: _Call, item: Piece | BaseException) -> None:
        if not call.finished:
            call.finished = True
            call.out.put_nowait(item)

    async def _read(self, worker: _Worker) -> None:
        assert worker.proc.stdout is not None
        try:
            while True:
                self._on_frame(worker, await read_frame(worker.proc.stdout))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except FrameError as exc:
            log.error("the model worker (pid %d) sent garbage: %s", worker.pid, exc)
            worker.proc.kill()
        self._on_exit(worker, await worker.proc.wait())

    def _on_frame(self, worker: _Worker, frame: Frame) -> None:
        now = time.monotonic()
        worker.last_heard = now
        kind = frame[0]
        if kind == "pieces":
            self._last_progress = now
            for rid, piece in frame[1]:
                call = self._calls.get(rid)
                if call is not None and call.worker is worker and not call.finished:
                    call.heard = True
                    if piece.finish_reason is not None:
                        self._end(call, piece)
                    else:
                        call.out.put_nowait(piece)
        elif kind == "error":
            _, rid, what, message, retry_after_s = frame
            self._last_progress = now
            call = self._calls.get(rid)
            if call is not None and call.worker is worker:
                call.heard = True
                self._end(call, _error(what, message, retry_after_s))
        elif kind == "status":
            worker.status = frame[1]
            if not worker.status.healthy and worker.kill_reason == "":
                self._kill_worker(worker, "reports its engine unhealthy")

    def _kill_worker(self, worker: _Worker, reason: str) -> None:
        """Kill a worker (hung, or its engine broken); its exit starts the restart."""
        worker.kill_reason = reason
        log.error("killing the model worker (pid %d): it %s", worker.pid, reason)
        if worker.proc.returncode is None:
            worker.proc.kill()

    def _on_exit(self, worker: _Worker, returncode: int) -> None:
        if self._worker is worker:
            self._worker = None
        if self._closing:
            return
        reason = worker.kill_reason or _describe_exit(returncode)
        log.error("the model worker (pid %d) %s; restarting it", worker.pid, reason)
        self._detail = f"restarting: the model worker {reason}"
        for call in self._calls.values():
            if call.worker is not worker or call.finished:
                continue
            call.worker = None
            if call.heard or call.resent:
                self._end(call, EngineError(CRASHED))
            else:
                # Nothing of it was shown yet: try once more on the next worker.
                call.resent = True
        self._keep(self._restart())

    async def _restart(self) -> None:
        started = time.monotonic()
        for attempt in itertools.count():
            await asyncio.sleep(RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)])
            now = time.monotonic()
            while self._restart_times and now - self._restart_times[0] > self._window_s:
                self._restart_times.popleft()
            if len(self._restart_times) >= self._max_restarts:
                self._fail(
                    f"the worker needed more than {self._max_restarts} restarts within "
                    f"{self._window_s:g}s (model.max_restarts, model.restart_window_s); "
                    f"last: {self._detail}"
                )
                return
            self._restart_times.append(now)
            self.restarts += 1
            try:
                await self._spawn()
            except EngineError as exc:
                log.error("restarting the model worker failed: %s", exc)
                self._detail = f"restarting: attempt {attempt + 1} failed: {exc}"
            else:
                log.info("the model worker is back after %.1fs", time.monotonic() - started)
                return

    def _fail(self, reason: str) -> None:
        self._fatal = f"the model could not be brought back: {reason}"
        log.critical(self._fatal)
        for call in self._calls.values():
            self._end(call, EngineError(self._fatal))
        self._failed.set()

    async def _watch(self) -> None:
        """The watchdog: kill a worker that has work and makes no progress, or stops answering."""
        last_tick = time.monotonic()
        while True:
            await asyncio.sleep(WATCHDOG_TICK_S)
            now = time.monotonic()
            stalled, last_tick = now - last_tick > WATCHDOG_TICK_S + STALL_S, now
            if stalled:
                # This event loop was stuck: the worker's frames are still unread in the pipe.
                continue
            worker = self._worker
            if worker is None or worker.kill_reason:
                continue
            if self._busy(worker) and now - self._last_progress > self._watchdog_s:
                self._kill_worker(
                    worker, f"made no progress for {self._watchdog_s:g}s (model.watchdog_s)"
                )
            elif now - worker.last_heard > self._watchdog_s + STATUS_POLL_S:
                self._kill_worker(
                    worker, f"did not answer for {self._watchdog_s:g}s (model.watchdog_s)"
                )
            elif now - worker.last_polled >= STATUS_POLL_S:
                worker.last_polled = now
                self._write(worker, ("status",))


def _error(kind: str, message: str, retry_after_s: float) -> EngineError:
    if kind == "busy":
        return EngineBusy(retry_after_s)
    if kind == "timeout":
        return EngineTimeout(message)
    return EngineError(message)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()
