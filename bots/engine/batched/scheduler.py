"""The batched engine's slot loop: admit, plan, decode, finish; on the engine thread only.

Each admitted request holds a `Slot` (slot.py) that goes from STARTED through the prompt's
chunks to GENERATING and back to IDLE. Each step is one `llama_decode` holding the next token of
every GENERATING slot plus prompt chunks of the others, `BATCH_TOKENS` in all, of one adapter set:
llama.cpp applies the context's LoRA adapters to every token of a decode, so slots of different
adapters take turns, one adapter set per step (adapter_turns.py).

With speculation on, a GENERATING slot's next token may bring a draft (`speculation.py`): the
tokens its context suggests come next, decoded in the same step with logits at each position.
`_accept` samples position after position with the slot's own sampler chain, exactly as the
following steps would have, and keeps the draft while the sampled token is the drafted one: a
reply is the same token for token as without speculation (greedy or seeded, up to the rounding
llama.cpp may do differently in a step of many tokens, as batching does), and a sampled one
is drawn from the model's distribution (a drafted token is kept with the probability the model
gives it, otherwise the token drawn instead is what the reply gets: standard speculative
sampling for a deterministic draft). The cells of the rejected tail are removed at once.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from bots.engine.base import ChatMessage, EngineError, EngineTimeout, Piece, Usage
from bots.engine.batched.adapter_turns import AdapterTurns
from bots.engine.batched.draft_odds import DraftOdds
from bots.engine.batched.kv import KVCache, held_tokens
from bots.engine.batched.next_turn import NextTurns
from bots.engine.batched.padding import decode_padded
from bots.engine.batched.prefix_cache import common_prefix
from bots.engine.batched.slot import Slot, SlotState
from bots.engine.batched.speculation import Drafter, Speculation
from bots.engine.batched.task import Task
from bots.engine.batched.text import TextStream
from bots.engine.llama_native import Batch, NativeError, NativeModel, Sampler, Sampling, TokenArray
from bots.engine.lora import LoraAdapters

log = logging.getLogger(__name__)

# Tokens per llama_decode call (n_batch = n_ubatch), streams and prompt chunks together, as
# vLLM's per-step token budget: a long new prompt pauses the streams for one 512-token chunk per
# step (0.7 s on 2 cores with Q8_0). Smaller chunks cost llama.cpp a thread synchronisation per
# graph node each: 128-token chunks made 4 concurrent streams 7% slower, 48 five times slower.
BATCH_TOKENS = 512

FinishReason = Literal["stop", "length", "cancelled"]


class Scheduler:
    """The slot loop's state and steps; every method runs on the engine thread."""

    def __init__(
        self,
        model: NativeModel,
        kv: KVCache,
        *,
        context_size: int,
        speculation: Speculation | None = None,
        pad_seq: int | None = None,
    ) -> None:
        self.model = model
        self.pad_seq = pad_seq  # the sequence id small decodes are padded with (padding.py)
        self.kv = kv
        self.ctx = kv.ctx
        self.context_size = context_size
        self.speculation = speculation or Speculation()
        self.batch = Batch(BATCH_TOKENS)
        self.adapters = LoraAdapters(model, kv.ctx)
        self.turns = AdapterTurns()
        # Slots admitted and not yet ended; read by status() from other threads.
        self.running = 0
        # Draft tokens decoded, and of which the model agreed with, since the engine started.
        self.drafted = 0
        self.accepted = 0
        self.odds = DraftOdds()
        self.next_turns = NextTurns(model, kv, self.adapters, pad_seq)

    def describe(self) -> str:
        layers = self.model.gpu_layers
        where = "CPU" if not layers else f"GPU ({'all' if layers < 0 else layers} layers)"
        spec = self.speculation
        drafts = (
            f"n-gram drafts: {self.accepted} of {self.drafted} tokens accepted"
            if spec.enabled
            else "speculation off"
        )
        return f"{where}; {self.kv.describe()}; {drafts}; {self.next_turns.describe()}"

    def close(self) -> None:
        self.ctx.close()
        self.model.close()

    # -- admission: prompt, prefix match, sequence id --------------------------------------

    def admit(self, task: Task) -> Slot | None:
        """A slot for the task; None when it ended already (an error sent, or cancelled)."""
        if task.cancelled.is_set():
            return None
        slot = Slot(task, admitted=time.monotonic(), text=TextStream(task.request.stop))
        try:
            self._prepare_prompt(slot)
        except Exception as exc:  # a template or tokenizer error belongs to this request only
            task.emit(EngineError(f"cannot build the prompt: {exc}"))
            return None
        self.next_turns.pause(slot.tokens)
        if len(slot.tokens) >= self.context_size:
            task.emit(
                EngineError(
                    f"the prompt has {len(slot.tokens)} tokens; the context holds "
                    f"{self.context_size} (model.n_ctx)"
                )
            )
            return None
        req = task.request
        if req.adapter is not None:
            try:
                self.adapters.load(req.adapter)
            except NativeError as exc:
                task.emit(EngineError(str(exc)))
                return None
        slot.max_new = min(req.max_tokens, self.context_size - len(slot.tokens))
        if not req.reuse_cache and self.running == 0:
            self.kv.empty()
        assigned = self.kv.assign(
            slot.tokens,
            last_turn_start=slot.last_turn_start,
            reuse=req.reuse_cache,
            adapter=req.adapter,
        )
        if assigned is None:
            task.emit(EngineError("no free sequence in the KV cache; try again"))
            return None
        slot.seq_id, shared = assigned
        slot.n_past = slot.cached = shared
        # A fresh request is evaluated in the same chunks every time: no split at the prefix.
        slot.want_prefix_entry = (
            req.reuse_cache
            and shared < slot.prefix_len < len(slot.tokens)
            and not self.kv.table.has_prefix(slot.tokens[: slot.prefix_len], req.adapter)
        )
        slot.sampler = Sampler(
            self.model,
            Sampling(req.temperature, req.top_p, req.top_k, req.repeat_penalty, req.seed),
        )
        slot.sampler.accept_prompt(slot.tokens)
        if self.speculation.enabled:
            slot.drafter = Drafter(slot.tokens, self.speculation.draft_max, self.odds)
        slot.state = SlotState.STARTED
        self.running += 1
        return slot

    def _prepare_prompt(self, slot: Slot) -> None:
        messages = slot.task.request.messages
        slot.tokens = self._tokens(messages, generation_prompt=True)
        system = messages[:1] if messages and messages[0].role == "system" else ()
        slot.prefix_len = (
            common_prefix(slot.tokens, self._tokens(system, generation_prompt=False))
            if system
            else 0
        )
        history = messages[:-1]
        slot.last_turn_start = (
            common_prefix(slot.tokens, self._tokens(history, generation_prompt=False))
            if len(history) > len(system)
            else slot.prefix_len
        )

    def _tokens(self, messages: tuple[ChatMessage, ...], *, generation_prompt: bool) -> TokenArray:
        return self.model.tokenize_chat(messages, generation_prompt=generation_prompt)

    # -- one step: a batch of decode tokens and prompt chunks ------------------------------

    def step(self, active: list[Slot]) -> list[Slot]:
        """Run one llama_decode for all active slots; return the slots still running."""
        now = time.monotonic()
        running: list[Slot] = []
        for slot in active:
            task = slot.task
            if task.cancelled.is_set():
                self._finish(slot, "cancelled", notify=False)
            elif now > task.deadline:
                task.emit(
                    EngineTimeout(
                        f"no complete reply within the request's {task.request.timeout_s:g}s "
                        "timeout"
                    )
                )
                self._finish(slot, "cancelled", notify=False)
            else:
                running.append(slot)
        if not running:
            return running
        adapter, turn = self.turns.pick(running)
        started = time.perf_counter()
        try:
            self.adapters.use(adapter)
            planned = self._decode(turn)
        except Exception as exc:  # a llama.cpp failure ends the slots in this batch, not the engine
            log.exception("decode failed")
            for slot in turn:
                slot.task.emit(EngineError(f"the model failed: {exc}"))
                self._drop(slot)
            return [slot for slot in running if slot.state is not SlotState.IDLE]
        tokens = self.batch.n
        streams = 0
        for slot in planned:
            streams += slot.state is SlotState.GENERATING
            self._after_decode(slot)
        if streams == len(planned) and streams:  # no prompt chunk: what the draft costs
            self.odds.stepped(streams, tokens, time.perf_counter() - started)
        return [slot for slot in running if slot.state is not SlotState.IDLE]

    def idle_step(self) -> None:
        """With no request running: one chunk of a conversation's next turn (next_turn.py)."""
        self.next_turns.step(self.batch, BATCH_TOKENS)

    def _plan(self, slots: list[Slot], *, prompts: bool, drafts: bool) -> list[Slot]:
        batch = self.batch
        batch.clear()
        planned: list[Slot] = []
        streams = sum(1 for slot in slots if slot.state is SlotState.GENERATING)
        drafts = drafts and streams <= self.speculation.max_streams
        later = streams  # streams still to place, this one included
        for slot in slots:
            if slot.state is not SlotState.GENERATING:
                continue
            later -= 1
            slot.draft = self._draft(slot, batch.free - 1 - later, streams) if drafts else []
            if slot.draft:
                slot.batch_index = batch.add_verified(
                    [slot.generated[-1], *slot.draft], slot.n_past, slot.seq_id
                )
            else:
                slot.batch_index = batch.add_token(slot.generated[-1], slot.n_past, slot.seq_id)
            planned.append(slot)
        if not prompts:
            return planned
        budget = batch.free
        for slot in slots:
            if slot.state is SlotState.GENERATING or slot.prompt_done or budget <= 0:
                continue
            end = min(len(slot.tokens), slot.n_past + budget)
            slot.chunk_end = end
            slot.batch_index = batch.add(
                slot.tokens[slot.n_past : end],
                slot.n_past,
                slot.seq_id,
                logits_last=end == len(slot.tokens),
            )
            budget -= end - slot.n_past
            planned.append(slot)
        return planned

    def _draft(self, slot: Slot, room: int, streams: int) -> list[int]:
        """The slot's draft for this step of `streams` streams: within the batch's `room`, the
        reply's max_tokens and the context."""
        if slot.drafter is None:
            return []
        left = min(room, slot.max_new - len(slot.generated), self.context_size - slot.n_past - 1)
        return slot.drafter.draft(left, streams)

    def _decode(self, slots: list[Slot]) -> list[Slot]:
        """Decode one batch, making room in the KV cache when it is full.

        Room comes from evicting idle sequences first, then from dropping this step's drafts,
        then from deferring prompt chunks to a later step (streams go on; the prompt waits for a
        stream to end), and last from ending the newest request with an error so that the
        others can finish.
        """
        prompts = drafts = True
        while slots:
            planned = self._plan(slots, prompts=prompts, drafts=drafts)
            if planned:
                rc = decode_padded(self.ctx, self.batch, self.pad_seq)
                if rc == 0:
                    return planned
                if rc != 1:
                    raise EngineError(f"llama_decode returned {rc}")
                if self.kv.evict_one():
                    continue
                if drafts and any(s.draft for s in planned):
                    drafts = False
                    continue
                streams = any(s.state is SlotState.GENERATING for s in planned)
                if (
                    prompts
                    and streams
                    and any(s.state is not SlotState.GENERATING for s in planned)
                ):
                    prompts = False
                    continue
            victim = max(planned or slots, key=lambda s: s.admitted)
            victim.task.emit(EngineError("the KV cache is full (model.kv_cells); try again later"))
            self._drop(victim)
            slots = [s for s in slots if s is not victim]
            prompts = drafts = True
        return []

    def _after_decode(self, slot: Slot) -> None:
        if slot.state is SlotState.GENERATING:
            self._accept(slot)
            return
        slot.n_past = slot.kv_end = slot.chunk_end
        self.kv.grew(slot.seq_id, slot.tokens[: slot.n_past])
        if slot.want_prefix_entry and slot.n_past >= slot.prefix_len:
            slot.want_prefix_entry = False
            self.kv.add_prefix(slot.seq_id, slot.prefix_len, slot.tokens)
        if not slot.prompt_done:
            slot.state = SlotState.PROCESSING_PROMPT
            return
        slot.state = SlotState.DONE_PROMPT
        assert slot.sampler is not None
        self._on_token(slot, slot.sampler.sample(self.ctx, slot.batch_index))

    def _accept(self, slot: Slot) -> None:
        """Sample after the decoded next token and along its draft while the model agrees.

        Position j's logits saw the draft up to j, so while each sampled token is the drafted
        one the next position's logits are what the next step would have computed; the first
        token that differs (or the one after a fully accepted draft) is the new next token.
        """
        assert slot.sampler is not None
        draft, start = slot.draft, slot.n_past
        slot.draft = []
        sampled: list[int] = []
        for j in range(len(draft) + 1):
            token = slot.sampler.sample(self.ctx, slot.batch_index + j)
            sampled.append(token)
            if j == len(draft) or token != draft[j]:
                break
        accepted = len(sampled) - 1
        slot.kv_end = start + 1 + len(draft)
        if draft:
            assert slot.drafter is not None
            slot.drafter.verified(len(draft), accepted)
            self.drafted += len(draft)
            self.accepted += accepted
            slot.n_past = start + 1 + accepted
            self._trim(slot)
        for i, token in enumerate(sampled):
            slot.n_past = start + 1 + i  # the next token and the drafted tokens before `token`
            self._on_token(slot, token)
            if slot.state is SlotState.IDLE:
                return

    def _trim(self, slot: Slot) -> None:
        """Remove the cells of draft tokens the reply did not keep (past `n_past`)."""
        if slot.kv_end > slot.n_past:
            self.ctx.seq_rm(slot.seq_id, slot.n_past, -1)
            slot.kv_end = slot.n_past

    # -- tokens to text ---------------------------------------------------------------------

    def _on_token(self, slot: Slot, token: int) -> None:
        if slot.first_token_at is None:
            slot.first_token_at = time.monotonic()
        if self.model.is_end_of_generation(token):
            self._finish(slot, "stop")
            return
        slot.generated.append(token)
        if slot.drafter is not None:
            slot.drafter.push(token)
        slot.state = SlotState.GENERATING
        text = slot.text.push(self.model.piece(token))
        if text:
            slot.shown.append(text)
            slot.task.emit(Piece(text))
        if slot.text.stopped:
            self._finish(slot, "stop", flush=False)
        elif len(slot.generated) >= slot.max_new:
            self._finish(slot, "length")

    def _finish(
        self, slot: Slot, reason: FinishReason, *, notify: bool = True, flush: bool = True
    ) -> None:
        # Retire first, so that whoever reads the final piece sees the engine without this slot.
        completion = len(slot.generated)
        self._retire(slot)
        if not notify:
            return
        task = slot.task
        tail = slot.text.flush() if flush else ""
        if tail:
            slot.shown.append(tail)
            task.emit(Piece(tail))
        end = time.monotonic()
        usage = Usage(
            prompt_tokens=len(slot.tokens),
            cached_tokens=slot.cached,
            completion_tokens=completion,
            queue_ms=(slot.admitted - task.submitted) * 1000,
            ttft_ms=((slot.first_token_at or end) - slot.admitted) * 1000,
            total_ms=(end - slot.admitted) * 1000,
        )
        task.emit(Piece("", finish_reason=reason, usage=usage))
        if reason != "cancelled":
            shown = "".join(slot.shown)
            self.next_turns.add(task.request, shown, last_turn_start=slot.last_turn_start)

    def _retire(self, slot: Slot) -> None:
        """Keep the slot's sequence as an idle cache entry: what its KV cells hold."""
        self._end(slot)
        self._trim(slot)
        self.kv.release(slot.seq_id, held_tokens(slot.tokens, slot.generated, slot.n_past))

    def _drop(self, slot: Slot) -> None:
        """End a slot and forget its sequence entirely (after an error)."""
        self._end(slot)
        self.kv.drop(slot.seq_id)

    def _end(self, slot: Slot) -> None:
        if slot.sampler is not None:
            slot.sampler.close()
            slot.sampler = None
            self.running -= 1
        slot.state = SlotState.IDLE
