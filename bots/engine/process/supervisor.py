"""The supervised engine: the local model in a child process, behind the same Engine API.

A native crash in llama.cpp kills its whole process. So the model lives in a worker process
(bots.engine.process.worker) that runs the local engine the settings name and streams pieces
back over a pipe (bots.engine.process.child starts it). This side:

- sends each request to the worker and hands its pieces to the caller (`engine.stream`);
- counts tokens itself, with the model's vocabulary alone (no weights), so prompt building never
  waits on the worker;
- watches the worker: when it exits (a crash, the OOM killer) or makes no progress for
  `model.watchdog_s` while it has work, the replies that had begun end with a short error, the
  requests that had not begun are sent again once, and a new worker is started after a backoff;
- gives up after `model.max_restarts` restarts within `model.restart_window_s`: every caller gets
  an error and `wait_failed()` returns, so `bots serve` exits non-zero and its service manager
  restarts it.

The process boundary is the reliability seam: this module is supervision alone.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
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
from bots.engine.llama_native import NativeError, NativeModel
from bots.engine.process.child import WorkerProcess, describe_exit, start_worker
from bots.engine.process.wire import Frame, FrameError, read_frame
from bots.settings import Settings

log = logging.getLogger(__name__)

# Waits before each restart attempt in a row; the last one repeats.
RESTART_BACKOFF_S = (0.2, 1.0, 2.0, 5.0, 10.0)
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
    worker: WorkerProcess | None = None  # where it was sent; None while it waits for a worker
    heard: bool = False  # the worker answered it (a piece or an error)
    finished: bool = False  # the last piece or an error is queued for the caller
    resent: bool = False


class SupervisedEngine:
    """An Engine whose model runs in a supervised worker process (see the module docstring)."""

    def __init__(self, settings: Settings, model_path: Path) -> None:
        model = settings.model
        self.model_path = model_path
        self.restarts = 0
        self._settings = settings
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
        self._worker: WorkerProcess | None = None
        self._vocab: NativeModel | None = None
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
        return len(self._vocab.tokenize(text))

    async def start(self) -> None:
        """Read the vocabulary, start the worker and wait until its model is loaded.

        A model that cannot be loaded at start is a configuration error: no retry, EngineError.
        """
        if self._worker is not None:
            return
        self._closing = False
        self._detail = "loading the model"
        try:
            vocab = await asyncio.to_thread(NativeModel, self.model_path, vocab_only=True)
        except NativeError as exc:
            raise EngineError(str(exc)) from exc
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
            worker.write(("stop",))
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
                worker.write(("cancel", call.rid))

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
        level = logging.getLogger().getEffectiveLevel()
        worker = await start_worker(
            self._settings, self.model_path, log_level=level, log_json=self._log_json
        )
        self._worker = worker
        self._context_size = worker.context_size
        self._model_name = worker.model
        self._queue_capacity = worker.queue_capacity
        self._last_progress = worker.last_heard
        worker.reader = asyncio.create_task(self._read(worker))
        log.info(
            "model worker pid %d ready in %.1fs", worker.pid, worker.last_heard - worker.started
        )
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
        worker.write(("gen", call.rid, call.request))

    def _busy(self, worker: WorkerProcess) -> bool:
        return any(c.worker is worker and not c.finished for c in self._calls.values())

    def _end(self, call: _Call, item: Piece | BaseException) -> None:
        if not call.finished:
            call.finished = True
            call.out.put_nowait(item)

    async def _read(self, worker: WorkerProcess) -> None:
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

    def _on_frame(self, worker: WorkerProcess, frame: Frame) -> None:
        now = time.monotonic()
        worker.last_heard = now
        kind = frame[0]
        if kind == "pieces":
            self._last_progress = now
            for rid, piece in frame[1]:
                call = self._calls.get(rid)
                if call is not None and call.worker is worker and not call.finished:
                    # A place in line is not an answer: a crash now still resends the call.
                    call.heard = call.heard or piece.ahead is None
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

    def _kill_worker(self, worker: WorkerProcess, reason: str) -> None:
        """Kill a worker (hung, or its engine broken); its exit starts the restart."""
        log.error("killing the model worker (pid %d): it %s", worker.pid, reason)
        worker.kill(reason)

    def _on_exit(self, worker: WorkerProcess, returncode: int) -> None:
        if self._worker is worker:
            self._worker = None
        if self._closing:
            return
        reason = worker.kill_reason or describe_exit(returncode)
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
                worker.write(("status",))


def _error(kind: str, message: str, retry_after_s: float) -> EngineError:
    if kind == "busy":
        return EngineBusy(retry_after_s)
    if kind == "timeout":
        return EngineTimeout(message)
    return EngineError(message)
