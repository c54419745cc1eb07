"""The batched engine's `Engine` side: `stream`, `start`, `close`, and the engine thread's loop.

`stream` queues a `Task`; the engine thread (one per engine: it alone touches the llama
context) admits tasks into slots while there is room for `parallel` of them and runs the
scheduler's steps until nothing is left to do, handing each step's pieces to the event loops
in one go; tasks still waiting are told their place in line when it changes. See the package
docstring for what the engine does, and scheduler.py for how.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

from bots.engine.base import (
    EngineBusy,
    EngineError,
    EngineStatus,
    GenerationRequest,
    Piece,
    read_pieces,
)
from bots.engine.batched.kv import KVCache
from bots.engine.batched.prefix_cache import SequenceTable
from bots.engine.batched.scheduler import BATCH_TOKENS, Scheduler
from bots.engine.batched.slot import Slot
from bots.engine.batched.speculation import Speculation
from bots.engine.batched.task import PieceOutbox, Task
from bots.engine.cpu_share import CpuShare
from bots.engine.llama_native import NativeContext, NativeModel

log = logging.getLogger(__name__)

DEFAULT_N_CTX = 8192
# KV cells shared by all sequences (about 23 KB each for SmolLM2-135M in f16, allocated up front):
# room for the running conversations. Idle ones do not stay: every decode step checks the
# attention mask of every cell up to the highest in use, whoever's it is, so `cool_down` parks
# them in RAM (a 6-persona follow-up workload ran 7x faster than with 16k cells kept full).
DEFAULT_KV_CELLS = 16384
DEFAULT_SEQ_IDS = 64
LLAMA_MAX_SEQ = 256  # llama.cpp's compile-time limit on sequence ids
DEFAULT_PARALLEL = 8
DEFAULT_QUEUE_SIZE = 32
# Evicted sequences kept in RAM, reserved at start: about fourteen 1,500-token persona prefixes
# of the default model; memory does not grow with the persona count.
DEFAULT_PARK_BYTES = 512 * 1024 * 1024
# How long the engine stays idle before it prepares a conversation's next turn: a person takes
# longer to write a follow-up, while a client sending requests back to back should not wait for
# a chunk of preparation in front of each (next_turn.py).
NEXT_TURN_GRACE_S = 0.25
CLOSE_TIMEOUT_S = 30.0


class BatchedEngine:
    """The `Engine` for local models: prefix caching and continuous batching on one context."""

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        parallel: int = DEFAULT_PARALLEL,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        kv_cells: int = DEFAULT_KV_CELLS,
        n_seq_max: int = DEFAULT_SEQ_IDS,
        park_bytes: int = DEFAULT_PARK_BYTES,
        flash_attn: str = "auto",
        speculation: Speculation | None = None,
        adapt_threads: bool = True,
    ) -> None:
        if parallel < 1 or queue_size < 0:
            raise ValueError("parallel must be >= 1 and queue_size >= 0")
        self.model_path = model_path
        self._n_ctx = n_ctx
        self._n_threads = n_threads or os.cpu_count() or 1
        self._n_gpu_layers = n_gpu_layers
        self._parallel = parallel
        self._queue_size = queue_size
        self._kv_cells = max(kv_cells, n_ctx)
        # Each running generation and each cached prefix needs an id of its own; keep spares.
        self._n_seq_max = min(max(n_seq_max, parallel + 3), LLAMA_MAX_SEQ)
        self._park_bytes = park_bytes
        self._flash_attn = flash_attn
        self._speculation = speculation or Speculation()
        # On a CPU, fewer threads while other processes hold cores (cpu_share.py); on a GPU the
        # threads only feed it, and the configured count stays.
        self._adapt_threads = adapt_threads and n_gpu_layers == 0
        self._cpu_share: CpuShare | None = None
        self._cond = threading.Condition()
        self._inbox: collections.deque[Task] = collections.deque()
        self._active: list[Slot] = []
        self._outbox = PieceOutbox()
        self._places: dict[Task, int] = {}  # the place in line each waiting task was told
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._model: NativeModel | None = None
        self._scheduler: Scheduler | None = None

    # -- the Engine protocol ----------------------------------------------------------------

    @property
    def context_size(self) -> int:
        """Tokens one conversation may use (prompt and reply)."""
        limit = min(self._n_ctx, self._kv_cells)
        if self._model is not None and self._model.n_ctx_train > 0:
            limit = min(limit, self._model.n_ctx_train)
        return limit

    async def start(self) -> None:
        """Load the model and create the context on the engine's own thread."""
        if self._thread is not None:
            return
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def run() -> None:
            try:
                self._scheduler = self._load()
            except Exception as exc:  # any load failure goes to the caller of start()
                loop.call_soon_threadsafe(ready.set_exception, EngineError(str(exc)))
                return
            loop.call_soon_threadsafe(ready.set_result, None)
            self._serve(self._scheduler)

        self._stopping = False
        self._thread = threading.Thread(target=run, name="bots-engine", daemon=True)
        self._thread.start()
        try:
            await ready
        except EngineError:
            self._thread = None
            raise

    async def close(self) -> None:
        """Stop the engine thread: waiting and running requests end with an EngineError."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        await asyncio.to_thread(thread.join, CLOSE_TIMEOUT_S)
        self._thread = None

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as plain text; safe from any thread once started."""
        if self._model is None:
            raise EngineError("the engine is not started")
        return len(self._model.tokenize(text))

    def status(self) -> EngineStatus:
        scheduler = self._scheduler
        detail = scheduler.describe() if scheduler is not None else "not started"
        share = self._cpu_share
        if scheduler is not None and share is not None and share.current < share.configured:
            detail += (
                f"; {share.current} of {share.configured} threads "
                f"(other processes use {share.others:.1f} cores)"
            )
        return EngineStatus(
            model=self.model_path.name,
            queue_depth=len(self._inbox),
            queue_capacity=self._queue_size,
            active=scheduler.running if scheduler is not None else 0,
            healthy=self._thread is not None and self._thread.is_alive(),
            detail=detail,
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        """Stream the reply; closing the iterator early cancels this sequence only."""
        if self._thread is None:
            raise EngineError("the engine is not started")
        loop = asyncio.get_running_loop()
        task = Task(
            request,
            loop,
            asyncio.Queue(),
            self._outbox,
            deadline=time.monotonic() + request.timeout_s,
        )
        with self._cond:
            if len(self._inbox) >= self._queue_size:
                raise EngineBusy()
            self._inbox.append(task)
            self._cond.notify()
        loop_deadline = loop.time() + request.timeout_s
        try:
            async for item in read_pieces(task.out, loop_deadline, request.timeout_s):
                yield item
        finally:
            task.cancelled.set()
            with self._cond:
                if task in self._inbox:  # its caller left while it waited: the place is free now
                    self._inbox.remove(task)
                self._cond.notify()

    # -- the engine thread ------------------------------------------------------------------

    def _load(self) -> Scheduler:
        model = NativeModel(self.model_path, n_gpu_layers=self._n_gpu_layers)
        try:
            ctx = NativeContext(
                model,
                kv_cells=self._kv_cells,
                n_seq_max=self._n_seq_max,
                n_threads=self._n_threads,
                n_batch=BATCH_TOKENS,
                n_ubatch=BATCH_TOKENS,
                flash_attn=self._flash_attn,
            )
        except Exception:
            model.close()
            raise
        self._model = model
        # The context's last sequence id is the padding's (padding.py), on a CPU only.
        pad_seq = self._n_seq_max - 1 if model.gpu_layers == 0 else None
        kv = KVCache(ctx, SequenceTable(self._n_seq_max - 1, self._park_bytes))
        return Scheduler(
            model,
            kv,
            context_size=self.context_size,
            speculation=self._speculation,
            pad_seq=pad_seq,
        )

    def _tell_places(self, waiting: list[Task]) -> None:
        """Tell each waiting task how many requests must end before it starts, when that
        changed: the ones ahead of it in line, plus one, less the free slots."""
        free = self._parallel - len(self._active)
        places: dict[Task, int] = {}
        for index, task in enumerate(waiting):
            ahead = index + 1 - free
            if ahead > 0:
                places[task] = ahead
                if self._places.get(task) != ahead:
                    task.emit(Piece("", ahead=ahead))
        self._places = places

    def _serve(self, scheduler: Scheduler) -> None:
        share = CpuShare(self._n_threads) if self._adapt_threads else None
        self._cpu_share = share
        threads = self._n_threads
        busy_until = 0.0  # when the last step for a request ended
        try:
            while True:
                with self._cond:
                    while not self._stopping and not self._inbox and not self._active:
                        if share is not None:  # the grace time too: others may use it freely
                            share.pause()
                        if not scheduler.next_turns.waiting:
                            self._cond.wait()
                            continue
                        left = busy_until + NEXT_TURN_GRACE_S - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    if self._stopping:
                        break
                    admitted: list[Task] = []
                    while self._inbox and len(self._active) + len(admitted) < self._parallel:
                        admitted.append(self._inbox.popleft())
                    waiting = [task for task in self._inbox if not task.cancelled.is_set()]
                for task in admitted:
                    slot = scheduler.admit(task)
                    if slot is not None:
                        self._active.append(slot)
                self._tell_places(waiting)
                self._outbox.flush()  # refusals and places in line, before this step's decode
                if share is not None and share.threads() != threads:
                    threads = share.current
                    scheduler.ctx.set_threads(threads)
                    log.info(
                        "decoding with %d of %d threads: other processes use %.1f cores",
                        threads,
                        share.configured,
                        share.others,
                    )
                if self._active:
                    self._active = scheduler.step(self._active)
                    self._outbox.flush()
                    busy_until = time.monotonic()
                else:  # nothing to answer: a conversation's next turn, one chunk
                    scheduler.idle_step()
                scheduler.kv.cool_down()
        finally:
            with self._cond:
                leftover = [*self._inbox, *(slot.task for slot in self._active)]
                self._inbox.clear()
                self._active = []
            for task in leftover:
                task.emit(EngineError("the engine was closed"))
            self._outbox.flush()
            scheduler.close()
            self._model = None
            self._scheduler = None
