"""The batched engine: every conversation decoded together on one llama context.

Like llama.cpp's server, but from Python and built for many personas:

- One unified KV cache shared by many sequence ids. A prompt starts from the cached sequence
  with the longest common token prefix (`prefix_cache`): a persona's instructions are evaluated
  once and copied into each new conversation with `llama_memory_seq_cp` (metadata only: the cells
  are shared), and a follow-up message evaluates only what is new since the last turn.
- Continuous batching: each step is one `llama_decode` holding the next token of every streaming
  sequence plus a chunk of waiting prompts (512 tokens per step in all), so a long new prompt
  delays the streams by one chunk per step instead of freezing them. Sampling runs in llama.cpp's
  sampler chain.
- Idle sequences leave the KV cache (beyond `HOT_IDLE_TOKENS`) for a RAM park reserved at start, so
  a returning persona or conversation is copied back in milliseconds instead of re-evaluated. A
  conversation is parked without its persona prefix, which is parked once per persona.

One worker thread owns the llama context; the asyncio side only queues requests and reads the
pieces the worker posts back, so the event loop never waits on the model.

Caching and batching change what is computed, never the tokens attended to: a reply is the same
as from a fresh context up to floating-point rounding. llama.cpp picks its CPU attention kernel
by the shape of each batch and the rounding differs between kernels, so long greedy replies can
part ways after a while; the tests pin down the cases where the kernels coincide and the
replies are bit-identical.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from bots.engine.base import (
    ChatMessage,
    EngineBusy,
    EngineError,
    EngineStatus,
    EngineTimeout,
    GenerationRequest,
    Piece,
    Usage,
    read_pieces,
)
from bots.engine.llama_native import (
    Batch,
    NativeContext,
    NativeModel,
    Sampler,
    Sampling,
    TokenArray,
)
from bots.engine.prefix_cache import (
    Entry,
    Match,
    Parked,
    SequenceTable,
    common_prefix,
    may_take_over,
)

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
# Tokens per llama_decode call (n_batch = n_ubatch), streams and prompt chunks together, as
# vLLM's per-step token budget: a long new prompt pauses the streams for one 512-token chunk per
# step (0.7 s on 2 cores with Q8_0). Smaller chunks cost llama.cpp a thread synchronisation per
# graph node each: 128-token chunks made 4 concurrent streams 7% slower, 48 five times slower.
BATCH_TOKENS = 512
# Fewer tokens (beyond the persona prefix) are not worth a place in the RAM park.
MIN_PARK_TOKENS = 16
# Idle tokens left in the KV cache when a reply ends; the rest are parked. None: llama.cpp splits
# a lone stream's attention over the cells by index, one range per thread, so idle cells below
# the stream's leave a thread with nothing to do. With 2,048 idle tokens kept, a 1,000-token
# single stream generated 25 tok/s instead of 35; parking and restoring cost milliseconds.
HOT_IDLE_TOKENS = 0
CLOSE_TIMEOUT_S = 30.0

FinishReason = Literal["stop", "length", "cancelled"]


_Outgoing = list[tuple["_Job", Piece | BaseException]]


class _Outbox:
    """Pieces on their way to the asyncio side, handed over once per step.

    One `call_soon_threadsafe` per event loop per step instead of one per token: each wakes the
    loop's thread, which then contends for the GIL with the worker (about 0.12 ms per token with
    4 streams on 2 cores).
    """

    def __init__(self) -> None:
        self._waiting: dict[asyncio.AbstractEventLoop, _Outgoing] = {}

    def put(self, job: _Job, item: Piece | BaseException) -> None:
        self._waiting.setdefault(job.loop, []).append((job, item))

    def flush(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for loop, items in waiting.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the consumers' loop is closed: nobody is listening any more
                for job, _ in items:
                    job.cancelled.set()


def _deliver(items: _Outgoing) -> None:
    for job, item in items:
        job.out.put_nowait(item)


@dataclass(eq=False)
class _Job:
    """One request on its way through the worker; the worker-side fields are the worker's own."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Piece | BaseException]
    outbox: _Outbox
    deadline: float
    submitted: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Worker side.
    tokens: TokenArray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    prefix_len: int = 0
    last_turn_start: int = 0
    want_prefix_entry: bool = False
    seq_id: int = -1
    n_past: int = 0
    cached: int = 0
    max_new: int = 0
    generated: list[int] = field(default_factory=list)
    pending: int | None = None
    sampler: Sampler | None = None
    admitted: float = 0.0
    first_token_at: float | None = None
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    held: str = ""
    batch_index: int = -1
    chunk_end: int = 0

    def emit(self, item: Piece | BaseException) -> None:
        """Queue `item` for the consumer; it leaves with the worker's next `_Outbox.flush`."""
        self.outbox.put(self, item)

    @property
    def prompt_done(self) -> bool:
        return self.n_past >= len(self.tokens)


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
        self._n_seq_max = min(max(n_seq_max, parallel + 2), LLAMA_MAX_SEQ)
        self._park_bytes = park_bytes
        self._flash_attn = flash_attn
        self._cond = threading.Condition()
        self._inbox: collections.deque[_Job] = collections.deque()
        self._active: list[_Job] = []
        self._outbox = _Outbox()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._model: NativeModel | None = None
        self._worker: _Worker | None = None

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
                self._worker = self._load()
            except Exception as exc:  # any load failure goes to the caller of start()
                loop.call_soon_threadsafe(ready.set_exception, EngineError(str(exc)))
                return
            loop.call_soon_threadsafe(ready.set_result, None)
            self._serve(self._worker)

        self._stopping = False
        self._thread = threading.Thread(target=run, name="bots-engine", daemon=True)
        self._thread.start()
        try:
            await ready
        except EngineError:
            self._thread = None
            raise

    async def close(self) -> None:
        """Stop the worker: waiting and running requests end with an EngineError."""
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
        worker = self._worker
        detail = worker.describe() if worker is not None else "not started"
        return EngineStatus(
            model=self.model_path.name,
            queue_depth=len(self._inbox),
            queue_capacity=self._queue_size,
            active=worker.running if worker is not None else 0,
            healthy=self._thread is not None and self._thread.is_alive(),
            detail=detail,
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        """Stream the reply; closing the iterator early cancels this sequence only."""
        if self._thread is None:
            raise EngineError("the engine is not started")
        loop = asyncio.get_running_loop()
        job = _Job(
            request,
            loop,
            asyncio.Queue(),
            self._outbox,
            deadline=time.monotonic() + request.timeout_s,
        )
        with self._cond:
            if len(self._inbox) >= self._queue_size:
                raise EngineBusy()
            self._inbox.append(job)
            self._cond.notify()
        loop_deadline = loop.time() + request.timeout_s
        try:
            async for item in read_pieces(job.out, loop_deadline, request.timeout_s):
                yield item
        finally:
            job.cancelled.set()
            with self._cond:
                self._cond.notify()

    # -- the worker thread ------------------------------------------------------------------

    def _load(self) -> _Worker:
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
        return _Worker(
            model,
            ctx,
            SequenceTable(self._n_seq_max, self._park_bytes),
            context_size=self.context_size,
        )

    def _serve(self, worker: _Worker) -> None:
        try:
            while True:
                with self._cond:
                    while not self._stopping and not self._inbox and not self._active:
                        self._cond.wait()
                    if self._stopping:
                        break
                    admitted: list[_Job] = []
                    while self._inbox and len(self._active) + len(admitted) < self._parallel:
                        admitted.append(self._inbox.popleft())
                for job in admitted:
                    if worker.admit(job):
                        self._active.append(job)
                self._outbox.flush()  # refusals, before this step's decode
                self._active = worker.step(self._active)
                self._outbox.flush()
                worker.cool_down()
        finally:
            with self._cond:
                leftover = [*self._inbox, *self._active]
                self._inbox.clear()
                self._active = []
            for job in leftover:
                job.emit(EngineError("the engine was closed"))
            self._outbox.flush()
            worker.close()
            self._model = None
            self._worker = None


class _Worker:
    """The scheduler loop's state and steps; every method runs on the engine thread."""

    def __init__(
        self, model: NativeModel, ctx: NativeContext, table: SequenceTable, *, context_size: int
    ) -> None:
        self.model = model
        self.ctx = ctx
        self.table = table
        self.context_size = context_size
        self.batch = Batch(BATCH_TOKENS)
        # Jobs admitted and not yet finished; read by status() from other threads.
        self.running = 0

    def describe(self) -> str:
        entries = list(self.table.entries)
        prefixes = sum(1 for e in entries if e.kind == "prefix")
        parked_mib = self.table.parked_bytes / 2**20
        layers = self.model.gpu_layers
        where = "CPU" if not layers else f"GPU ({'all' if layers < 0 else layers} layers)"
        return (
            f"{where}; {self.ctx.kv_cells} KV cells; cached: {prefixes} persona prefixes, "
            f"{len(entries) - prefixes} conversations; parked in RAM: {self.table.parked_count} "
            f"({parked_mib:.1f} of {self.table.arena.capacity / 2**20:.0f} MiB)"
        )

    def close(self) -> None:
        self.ctx.close()
        self.model.close()

    # -- admission: prompt, prefix match, sequence id --------------------------------------

    def admit(self, job: _Job) -> bool:
        """Prepare a job's prompt and sequence; False when it ended already (error, cancelled)."""
        if job.cancelled.is_set():
            return False
        job.admitted = time.monotonic()
        try:
            self._prepare_prompt(job)
        except Exception as exc:  # a template or tokenizer error belongs to this request only
            job.emit(EngineError(f"cannot build the prompt: {exc}"))
            return False
        if len(job.tokens) >= self.context_size:
            job.emit(
                EngineError(
                    f"the prompt has {len(job.tokens)} tokens; the context holds "
                    f"{self.context_size} (model.n_ctx)"
                )
            )
            return False
        job.max_new = min(job.request.max_tokens, self.context_size - len(job.tokens))
        if not self._assign_sequence(job):
            job.emit(EngineError("no free sequence in the KV cache; try again"))
            return False
        req = job.request
        job.sampler = Sampler(
            self.model,
            Sampling(req.temperature, req.top_p, req.top_k, req.repeat_penalty, req.seed),
        )
        job.sampler.accept_prompt(job.tokens)
        self.running += 1
        return True

    def _prepare_prompt(self, job: _Job) -> None:
        messages = job.request.messages
        job.tokens = self._tokens(messages, generation_prompt=True)
        system = messages[:1] if messages and messages[0].role == "system" else ()
        job.prefix_len = (
            common_prefix(job.tokens, self._tokens(system, generation_prompt=False))
            if system
            else 0
        )
        history = messages[:-1]
        job.last_turn_start = (
            common_prefix(job.tokens, self._tokens(history, generation_prompt=False))
            if len(history) > len(system)
            else job.prefix_len
        )

    def _tokens(self, messages: tuple[ChatMessage, ...], *, generation_prompt: bool) -> TokenArray:
        return self.model.tokenize_chat(messages, generation_prompt=generation_prompt)

    def _assign_sequence(self, job: _Job) -> bool:
        if not job.request.reuse_cache and self.running == 0:
            self._empty_cache()
        match = self.table.best_match(job.tokens) if job.request.reuse_cache else Match(0)
        self.table.touch_prefixes_of(job.tokens)
        # At least the last prompt token is evaluated again: its logits start the reply.
        shared = min(match.length, len(job.tokens) - 1)
        entry = match.entry
        if entry is not None and may_take_over(entry, shared):
            self.ctx.seq_rm(entry.seq_id, shared, -1)
            seq_id = entry.seq_id
        else:
            spare = self._new_seq_id(pinned=entry)
            if spare is None:
                return False
            seq_id = spare
            if entry is not None and shared > 0:
                self.ctx.seq_cp(entry.seq_id, seq_id, 0, shared)
            elif match.parked is not None and shared > 0:
                if self._restore(match.parked, seq_id, shared):
                    self.ctx.seq_rm(seq_id, shared, -1)
                else:
                    shared = 0
            else:
                shared = 0
        self.table.put(
            Entry(
                seq_id,
                job.tokens[:shared],
                "conversation",
                last_turn_start=job.last_turn_start,
                busy=True,
            )
        )
        job.seq_id = seq_id
        job.n_past = job.cached = shared
        # A fresh request is evaluated in the same chunks every time: no split at the prefix.
        job.want_prefix_entry = (
            job.request.reuse_cache
            and shared < job.prefix_len < len(job.tokens)
            and not self.table.has_prefix(job.tokens[: job.prefix_len])
        )
        return True

    def _empty_cache(self) -> None:
        """Park every idle sequence and start cell placement over.

        For a fresh evaluation (an eval case) with nothing else running: llama.cpp's kernels
        round differently with the cells laid out differently, so the same case on the same
        persona gives the same answer only from the same layout.
        """
        while self._evict_one():
            pass
        self.ctx.clear()

    def _new_seq_id(self, *, pinned: Entry | None = None) -> int | None:
        """A free sequence id, evicting idle entries (but not `pinned`) until one is free."""
        with _pinned(pinned):
            seq_id = self.table.take_id()
            while seq_id is None and self._evict_one():
                seq_id = self.table.take_id()
            return seq_id

    def _restore(self, parked: Parked, seq_id: int, shared: int) -> bool:
        """Copy a parked sequence into `seq_id`, evicting idle ones until it fits.

        A conversation parked without its persona prefix gets the prefix's cells copied from the
        cache (restored from the park first when needed). The parked copy stays for others (a
        persona prefix, or another conversation that this prompt only shares a prefix with),
        unless this prompt is that conversation's next turn: it is about to grow, and will be
        parked again when it goes idle.
        """
        with _pinned(parked):
            base = self._cached_base(parked) if parked.base else None
            if parked.base and base is None:
                self.table.unpark(parked)  # its persona prefix is gone: the rest is of no use
                return False
            with _pinned(base):
                if not self._load(seq_id, parked):
                    return False
                if base is not None:
                    self.ctx.seq_cp(base.seq_id, seq_id, 0, parked.base)
        if parked.kind == "conversation" and shared >= parked.last_turn_start:
            self.table.unpark(parked)
        else:
            parked.touch()
        return True

    def _cached_base(self, parked: Parked) -> Entry | None:
        """A cached sequence holding `parked`'s persona prefix, restoring the prefix if needed."""
        head = parked.tokens[: parked.base]
        entry = self.table.cached_holding(head)
        prefix = self.table.parked_prefix(head) if entry is None else None
        if prefix is None:
            return entry
        with _pinned(prefix):
            seq_id = self._new_seq_id()
            if seq_id is None:
                return None
            if not self._load(seq_id, prefix):
                self.table.release(seq_id)
                return None
        prefix.touch()
        entry = Entry(seq_id, prefix.tokens, "prefix")
        self.table.put(entry)
        return entry

    def _load(self, seq_id: int, parked: Parked) -> bool:
        """`llama_state_seq_set_data` from the park, evicting idle sequences until it fits.

        `parked` must be pinned: evictions park other sequences, which may move blocks of the
        park (the view is taken again after each) but never drop a pinned one.
        """
        while not self.ctx.restore_seq(seq_id, self.table.arena.view(parked.offset, parked.nbytes)):
            if not self._evict_one():
                return False
        return True

    def _evict_one(self) -> bool:
        """Drop the least recently used idle sequence (parking it when worth it)."""
        for entry in self.table.eviction_order():
            if not self._covered(entry):
                self._park(entry)
            self.ctx.seq_rm(entry.seq_id)
            self.table.release(entry.seq_id)
            return True
        return False

    def _park(self, entry: Entry) -> None:
        """Copy an entry being evicted into the park; a conversation without its persona prefix.

        The prefix, parked or cached once for all of the persona's conversations, would
        otherwise be stored again with each of them: a 1,500-token persona is 35 MB of KV cells
        with the default model, and a conversation's own turns a few hundred tokens.
        """
        base = self.table.persona_prefix_length(entry.tokens) if entry.kind == "conversation" else 0
        if len(entry.tokens) - base < MIN_PARK_TOKENS:
            return
        if base:  # the entry is dropped next: its cells before `base` may go now
            self.ctx.seq_rm(entry.seq_id, 0, base)
        size = self.ctx.seq_state_size(entry.seq_id)
        offset = self.table.make_room(size, entry.kind)
        if offset is None:
            return
        try:
            self.ctx.save_seq(entry.seq_id, self.table.arena.view(offset, size))
        except Exception:  # parking is an optimisation; eviction must go on
            log.exception("could not park sequence %d", entry.seq_id)
            return
        self.table.add_parked(entry, offset, size, base=base)

    def _covered(self, entry: Entry) -> bool:
        """Whether parking `entry` is waste: another sequence holds all of its tokens.

        A persona prefix counts as held only by a parked prefix: a conversation that contains
        it may be dropped from the park for another conversation, the prefix may not.
        """
        if entry.kind == "prefix":
            return self.table.parked_prefix(entry.tokens) is not None
        return self.table.covers(entry.tokens, besides=entry)

    def cool_down(self) -> None:
        """Move idle sequences out of the KV cache beyond `HOT_IDLE_TOKENS`.

        Every cell in the cache costs each decode step an attention-mask check, whoever's it is:
        with 16k cells of idle prefixes a follow-up prompt was evaluated several times slower.
        Parked, the same sequences cost a copy (milliseconds) when they are next needed.
        """
        while self.table.idle_tokens() > HOT_IDLE_TOKENS and self._evict_one():
            pass

    # -- one step: a batch of decode tokens and prompt chunks ------------------------------

    def step(self, active: list[_Job]) -> list[_Job]:
        """Run one llama_decode for all active jobs; return the jobs still running."""
        now = time.monotonic()
        running: list[_Job] = []
        for job in active:
            if job.cancelled.is_set():
                self._finish(job, "cancelled", notify=False)
            elif now > job.deadline:
                job.emit(
                    EngineTimeout(
                        f"no complete reply within the request's {job.request.timeout_s:g}s timeout"
                    )
                )
                self._finish(job, "cancelled", notify=False)
            else:
                running.append(job)
        if not running:
            return running
        try:
            planned = self._decode(running)
        except Exception as exc:  # a llama.cpp failure ends the jobs in this batch, not the engine
            log.exception("decode failed")
            for job in running:
                job.emit(EngineError(f"the model failed: {exc}"))
                self._drop(job)
            return []
        for job in planned:
            self._after_decode(job)
        return [job for job in running if job.sampler is not None]

    def _plan(self, jobs: list[_Job], *, prompts: bool) -> list[_Job]:
        batch = self.batch
        batch.clear()
        planned: list[_Job] = []
        for job in jobs:
            if job.pending is not None:
                job.batch_index = batch.add_token(job.pending, job.n_past, job.seq_id)
                planned.append(job)
        if not prompts:
            return planned
        budget = batch.free
        for job in jobs:
            if job.pending is not None or job.prompt_done or budget <= 0:
                continue
            end = min(len(job.tokens), job.n_past + budget)
            job.chunk_end = end
            job.batch_index = batch.add(
                job.tokens[job.n_past : end],
                job.n_past,
                job.seq_id,
                logits_last=end == len(job.tokens),
            )
            budget -= end - job.n_past
            planned.append(job)
        return planned

    def _decode(self, jobs: list[_Job]) -> list[_Job]:
        """Decode one batch, making room in the KV cache when it is full.

        Room comes from evicting idle sequences first, then from deferring prompt chunks to a
        later step (streams go on; the prompt waits for a stream to end), and last from ending
        the newest request with an error so that the others can finish.
        """
        prompts = True
        while jobs:
            planned = self._plan(jobs, prompts=prompts)
            if planned:
                rc = self.ctx.decode(self.batch)
                if rc == 0:
                    return planned
                if rc != 1:
                    raise EngineError(f"llama_decode returned {rc}")
                if self._evict_one():
                    continue
                streams = any(j.pending is not None for j in planned)
                if prompts and streams and any(j.pending is None for j in planned):
                    prompts = False
                    continue
            victim = max(planned or jobs, key=lambda j: j.admitted)
            victim.emit(EngineError("the KV cache is full (model.kv_cells); try again later"))
            self._drop(victim)
            jobs = [j for j in jobs if j is not victim]
            prompts = True
        return []

    def _after_decode(self, job: _Job) -> None:
        if job.pending is not None:
            job.generated.append(job.pending)
            job.n_past += 1
            job.pending = None
        else:
            job.n_past = job.chunk_end
            entry = self.table.get(job.seq_id)
            if entry is not None:
                entry.tokens = job.tokens[: job.n_past]
            if job.want_prefix_entry and job.n_past >= job.prefix_len:
                self._add_prefix_entry(job)
            if not job.prompt_done:
                return
        assert job.sampler is not None
        token = job.sampler.sample(self.ctx, job.batch_index)
        self._on_token(job, token)

    def _add_prefix_entry(self, job: _Job) -> None:
        job.want_prefix_entry = False
        seq_id = self.table.take_id()
        if seq_id is None:
            return
        self.ctx.seq_cp(job.seq_id, seq_id, 0, job.prefix_len)
        self.table.put(Entry(seq_id, job.tokens[: job.prefix_len].copy(), "prefix"))

    # -- tokens to text ---------------------------------------------------------------------

    def _on_token(self, job: _Job, token: int) -> None:
        if job.first_token_at is None:
            job.first_token_at = time.monotonic()
        if self.model.is_end_of_generation(token):
            self._finish(job, "stop")
            return
        job.pending = token
        text = job.held + job.decoder.decode(self.model.piece(token))
        stops = job.request.stop
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            job.held = ""
            if cut:
                job.emit(Piece(text[:cut]))
            self._finish(job, "stop", flush=False)
            return
        keep = _partial_stop_suffix(text, stops)
        job.held = text[len(text) - keep :] if keep else ""
        if len(text) > keep:
            job.emit(Piece(text[: len(text) - keep]))
        if len(job.generated) + 1 >= job.max_new:
            self._finish(job, "length")

    def _finish(
        self, job: _Job, reason: FinishReason, *, notify: bool = True, flush: bool = True
    ) -> None:
        # Retire first, so that whoever reads the final piece sees the engine without this job.
        completion = len(job.generated) + (job.pending is not None)
        self._retire(job)
        if not notify:
            return
        tail = job.held + job.decoder.decode(b"", final=True) if flush else ""
        if tail:
            job.emit(Piece(tail))
        end = time.monotonic()
        usage = Usage(
            prompt_tokens=len(job.tokens),
            cached_tokens=job.cached,
            completion_tokens=completion,
            queue_ms=(job.admitted - job.submitted) * 1000,
            ttft_ms=((job.first_token_at or end) - job.admitted) * 1000,
            total_ms=(end - job.admitted) * 1000,
        )
        job.emit(Piece("", finish_reason=reason, usage=usage))

    def _retire(self, job: _Job) -> None:
        """Keep the job's sequence as an idle cache entry: what its KV cells hold."""
        if job.sampler is not None:
            job.sampler.close()
            job.sampler = None
            self.running -= 1
        entry = self.table.get(job.seq_id)
        if entry is None:
            return
        if job.prompt_done:
            entry.tokens = np.concatenate([job.tokens, np.asarray(job.generated, dtype=np.int32)])
        else:
            entry.tokens = job.tokens[: job.n_past]
        entry.busy = False
        entry.touch()

    def _drop(self, job: _Job) -> None:
        """Forget a job and its sequence entirely (after an error)."""
        if job.sampler is not None:
            job.sampler.close()
            job.sampler = None
            self.running -= 1
        if job.seq_id >= 0 and self.table.get(job.seq_id) is not None:
            self.ctx.seq_rm(job.seq_id)
            self.table.release(job.seq_id)


@contextlib.contextmanager
def _pinned(held: Entry | Parked | None) -> Iterator[None]:
    """Keep a cached entry from eviction, or a parked one from being dropped or overwritten,
    while its cells are being copied."""
    if held is None or held.busy:
        yield
        return
    held.busy = True
    try:
        yield
    finally:
        held.busy = False


def _partial_stop_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could begin a stop string (held back)."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best
