"""The next turn's prefix, evaluated while the engine is idle; on the engine thread only.

A follow-up's prompt repeats the conversation so far, but not as the KV cache holds it: the
cache holds the last prompt (its retrieved documents, then the question) and the reply, while
the history of the next prompt holds the question alone and then the reply. Every cell after
the documents' start no longer matches, so each follow-up used to evaluate the previous
question and answer again before its own documents and question: with replies of a few hundred
tokens, most of its time to first token.

When a request says how its history will remember it (`GenerationRequest.remembered_as`), the
engine, once the reply ended and nothing else waits, evaluates the conversation as the next
prompt will start: the history, this question, this reply. The cells are the same as the next
prompt would compute (the same tokens at the same positions), so the follow-up's reply does not
change; only its first token comes sooner. The work runs one chunk per idle moment: a request
that arrives meanwhile waits at most one chunk, and keeps whatever part is already evaluated.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from bots.engine.base import Adapter, ChatMessage, GenerationRequest
from bots.engine.batched.kv import KVCache
from bots.engine.batched.padding import decode_padded
from bots.engine.batched.prefix_cache import common_prefix
from bots.engine.llama_native import Batch, NativeError, NativeModel, TokenArray
from bots.engine.lora import LoraAdapters

log = logging.getLogger(__name__)

# Replies whose next turn is still to prepare; an older one is dropped beyond this (its
# conversation simply evaluates its follow-up in full, as without the preparation).
PENDING_MAX = 8


def next_turn_messages(request: GenerationRequest, reply: str) -> tuple[ChatMessage, ...] | None:
    """The messages the conversation's next prompt starts with, or None where the request did
    not say how its history remembers it (or evaluates afresh, as an eval does)."""
    messages = request.messages
    if request.remembered_as is None or not request.reuse_cache or not reply.strip():
        return None
    if not messages or messages[-1].role != "user":
        return None
    return (
        *messages[:-1],
        ChatMessage("user", request.remembered_as),
        ChatMessage("assistant", reply),
    )


@dataclass(eq=False)
class _Job:
    tokens: TokenArray
    last_turn_start: int
    adapter: Adapter | None
    seq_id: int = -1
    n_past: int = 0


class NextTurns:
    """Next-turn prefixes waiting to be evaluated, newest first, and the one in progress."""

    def __init__(
        self, model: NativeModel, kv: KVCache, adapters: LoraAdapters, pad_seq: int | None
    ) -> None:
        self.model = model
        self.pad_seq = pad_seq
        self.kv = kv
        self.adapters = adapters
        self._pending: deque[_Job] = deque(maxlen=PENDING_MAX)
        self._current: _Job | None = None
        # Prefixes completed and tokens evaluated for them, since the engine started.
        self.prepared = 0
        self.tokens = 0

    def describe(self) -> str:
        return f"next turns prepared: {self.prepared} ({self.tokens} tokens)"

    @property
    def waiting(self) -> bool:
        """Whether there is work for an idle moment."""
        return self._current is not None or bool(self._pending)

    def add(
        self,
        request: GenerationRequest,
        reply: str,
        *,
        last_turn_start: int,
    ) -> None:
        """Remember to prepare the turn after `request`, answered with `reply`."""
        messages = next_turn_messages(request, reply)
        if messages is None:
            return
        try:
            tokens = self.model.tokenize_chat(messages, generation_prompt=False)
        except Exception:  # the reply's own prompt was built; its next one is only a guess
            log.exception("cannot build the next turn's prompt")
            return
        self._pending.appendleft(_Job(tokens, last_turn_start, request.adapter))

    def step(self, batch: Batch, budget: int) -> None:
        """Evaluate up to `budget` tokens of the newest waiting prefix (one llama_decode)."""
        job = self._current or self._start()
        if job is None:
            return
        end = min(len(job.tokens), job.n_past + budget)
        batch.clear()
        batch.add(job.tokens[job.n_past : end], job.n_past, job.seq_id, logits_last=False)
        try:
            self.adapters.use(job.adapter)
        except NativeError as exc:  # the adapter's file went bad since its reply
            log.warning("cannot prepare a next turn: %s", exc)
            self._end(job)
            return
        rc = decode_padded(self.kv.ctx, batch, self.pad_seq)
        while rc == 1 and self.kv.evict_one():
            rc = decode_padded(self.kv.ctx, batch, self.pad_seq)
        if rc != 0:
            log.info("no room to prepare a next turn (llama_decode returned %d)", rc)
            self._end(job)
            return
        self.tokens += end - job.n_past
        job.n_past = end
        self.kv.grew(job.seq_id, job.tokens[:end])
        if end == len(job.tokens):
            self.prepared += 1
            self._end(job)

    def pause(self, tokens: TokenArray) -> None:
        """A request for `tokens` arrived: keep what the prefix in progress has so far, as an
        idle entry, and forget waiting prefixes of the conversation it continues (it moved on,
        or is the very follow-up: preparing its turn would only evaluate an older one)."""
        if self._current is not None:
            self._end(self._current)
        for job in list(self._pending):
            if common_prefix(job.tokens, tokens) > job.last_turn_start:
                self._pending.remove(job)

    def _start(self) -> _Job | None:
        while self._pending:
            job = self._pending.popleft()
            assigned = self.kv.assign(
                job.tokens,
                last_turn_start=job.last_turn_start,
                reuse=True,
                adapter=job.adapter,
            )
            if assigned is None:
                return None
            job.seq_id, job.n_past = assigned
            if job.n_past >= len(job.tokens) - 1:  # all there already (no documents came)
                self.kv.release(job.seq_id, job.tokens[: job.n_past])
                continue
            self._current = job
            return job
        return None

    def _end(self, job: _Job) -> None:
        self.kv.release(job.seq_id, job.tokens[: job.n_past])
        self._current = None
