"""The simple engine: llama-cpp-python's high-level chat API on one worker thread.

It evaluates each prompt from the longest prefix it shares with the previous request only, so
interleaved personas pay their full prompt every time. It is the baseline `bots bench` compares
against, and the most conservative path (e.g. for an unusual GGUF or GPU build).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bots.engine.base import (
    EngineBusy,
    EngineError,
    EngineStatus,
    EngineTimeout,
    GenerationRequest,
    Piece,
    Usage,
)
from bots.engine.model_files import without_extra_buffers

STOP_JOB = None


@dataclass(eq=False)  # compared by identity: the line holds each job once
class _Generation:
    """One request between `stream` and the `Llama` thread, which posts its pieces back."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Piece | BaseException]
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    ahead: int = 0  # the place in line it was last told

    def emit(self, item: Piece | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class SimpleEngine:
    """One `Llama` owned by one thread; requests wait in a bounded queue."""

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        queue_size: int = 16,
    ) -> None:
        self.model_path = model_path
        self._n_ctx = n_ctx
        self._n_threads = n_threads or os.cpu_count() or 1
        self._n_gpu_layers = n_gpu_layers
        self._queue_size = queue_size
        self._jobs: queue.Queue[_Generation | None] = queue.Queue()
        self._line: list[_Generation] = []  # waiting jobs, in order
        self._active = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._llm: Any = None
        self._vocab: Any = None

    @property
    def context_size(self) -> int:
        return self._n_ctx

    async def start(self) -> None:
        """Load the model on the worker thread and wait until it is ready."""
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()

        def run() -> None:
            try:
                self._load()
            except BaseException as exc:  # report any load failure to the caller
                loop.call_soon_threadsafe(ready.set_exception, EngineError(str(exc)))
                return
            loop.call_soon_threadsafe(ready.set_result, None)
            self._work()

        self._thread = threading.Thread(target=run, name="bots-engine", daemon=True)
        self._thread.start()
        await ready

    def _load(self) -> None:
        from llama_cpp import Llama

        from bots.engine.llama_native import NativeModel

        # Our own tokenizer and template: llama-cpp-python's chat API tokenizes message text
        # with special tokens on, so a document could open a fake system turn.
        self._vocab = NativeModel(self.model_path, vocab_only=True)
        with without_extra_buffers():
            self._llm = Llama(
                str(self.model_path),
                n_ctx=self._n_ctx,
                n_threads=self._n_threads,
                n_threads_batch=self._n_threads,
                n_gpu_layers=self._n_gpu_layers,
                verbose=False,
            )

    async def close(self) -> None:
        """Stop the worker after the current job."""
        if self._thread is not None:
            self._jobs.put(STOP_JOB)
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` with the model's tokenizer (a vocab-only copy, safe off-thread)."""
        return len(self._vocab.tokenize(text))

    def status(self) -> EngineStatus:
        return EngineStatus(
            model=self.model_path.name,
            queue_depth=len(self._line),
            queue_capacity=self._queue_size,
            active=self._active,
            healthy=self._thread is not None and self._thread.is_alive(),
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        """Stream the reply; leaving the loop early cancels the generation."""
        if request.adapter is not None:
            raise EngineError(
                f"the simple engine serves no adapters ({request.adapter.name}): "
                "set model.engine = batched"
            )
        job = _Generation(request, asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if len(self._line) >= self._queue_size:
                raise EngineBusy()
            self._line.append(job)
            self._tell_places()
        self._jobs.put(job)
        try:
            while True:
                item = await job.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            job.cancelled.set()
            with self._lock:
                if job in self._line:  # its caller left while it waited: the place is free now
                    self._line.remove(job)
                    self._tell_places()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                if job not in self._line:
                    continue  # left the line before its turn
                self._line.remove(job)
                self._active += 1
                self._tell_places()
            last: Piece | BaseException | None = None
            try:
                if not job.cancelled.is_set():
                    last = self._generate(job)
            except Exception as exc:  # the caller gets the error, the worker keeps serving
                last = EngineError(f"generation failed: {exc}")
            finally:
                with self._lock:
                    self._active -= 1
            # Sent after the counters are settled, so a caller that saw its reply end sees an
            # idle engine in status().
            if last is not None:
                job.emit(last)

    def _tell_places(self) -> None:
        """Tell each waiting job how many requests must end before it starts, when that
        changed (under the lock)."""
        waiting = [job for job in self._line if not job.cancelled.is_set()]
        for index, job in enumerate(waiting):
            ahead = index + self._active
            if ahead != job.ahead and ahead > 0:
                job.ahead = ahead
                job.emit(Piece("", ahead=ahead))

    def _generate(self, job: _Generation) -> Piece | BaseException:
        """Stream pieces to the job; return the final piece or the error to send last."""
        req = job.request
        started = time.perf_counter()
        deadline = started + req.timeout_s
        chunks = self._llm.create_completion(
            prompt=self._vocab.tokenize_chat(req.messages, generation_prompt=True).tolist(),
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            repeat_penalty=req.repeat_penalty,
            seed=req.seed,
            stop=list(req.stop) or None,
            stream=True,
        )
        first: float | None = None
        completion = 0
        finish: str = "stop"
        try:
            for chunk in chunks:
                if job.cancelled.is_set():
                    finish = "cancelled"
                    break
                if time.perf_counter() > deadline:
                    return EngineTimeout(f"no complete reply within {req.timeout_s:g}s")
                choice = chunk["choices"][0]
                text = choice["text"]
                if text:
                    first = first or time.perf_counter()
                    completion += 1
                    job.emit(Piece(text))
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        finally:
            with contextlib.suppress(Exception):
                chunks.close()
        end = time.perf_counter()
        prompt_tokens = max(0, int(self._llm.n_tokens) - completion)
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            queue_ms=(started - job.submitted) * 1000,
            ttft_ms=((first or end) - started) * 1000,
            total_ms=(end - started) * 1000,
        )
        reason: Literal["stop", "length", "cancelled"] = (
            "cancelled" if finish == "cancelled" else "length" if finish == "length" else "stop"
        )
        return Piece("", finish_reason=reason, usage=usage)
