"""The KV cache of the batched engine's llama context: which sequence holds what, and the moves.

`prefix_cache.SequenceTable` is the bookkeeping (no llama.cpp calls); `KVCache` carries its
decisions out on the context: a new prompt is given a sequence id that already holds its longest
cached prefix (taken over, copied with `llama_memory_seq_cp`, or restored from the RAM park),
idle sequences are evicted least recently used first (parked in RAM when worth it), and
`cool_down` moves idle sequences out after every step. It knows token arrays and sequence ids,
not requests, so it can be driven alone on a small context.

The KV policy is what gets tuned most; every change to it should keep the engine's replies
bit-identical (tests/test_engine_batched.py) and be measured (`bots bench engine`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np

from bots.engine.base import Adapter
from bots.engine.batched.prefix_cache import Entry, Match, Parked, SequenceTable, may_take_over
from bots.engine.llama_native import NativeContext, TokenArray

log = logging.getLogger(__name__)

# Fewer tokens (beyond the persona prefix) are not worth a place in the RAM park.
MIN_PARK_TOKENS = 16
# Idle tokens left in the KV cache when a reply ends; the rest are parked. None: llama.cpp splits
# a lone stream's attention over the cells by index, one range per thread, so idle cells below
# the stream's leave a thread with nothing to do. With 2,048 idle tokens kept, a 1,000-token
# single stream generated 25 tok/s instead of 35; parking and restoring cost milliseconds.
HOT_IDLE_TOKENS = 0


class KVCache:
    """One llama context's sequences; every method runs on the engine thread."""

    def __init__(self, ctx: NativeContext, table: SequenceTable) -> None:
        self.ctx = ctx
        self.table = table

    def describe(self) -> str:
        entries = list(self.table.entries)
        prefixes = sum(1 for e in entries if e.kind == "prefix")
        parked_mib = self.table.parked_bytes / 2**20
        return (
            f"{self.ctx.kv_cells} KV cells; cached: {prefixes} persona prefixes, "
            f"{len(entries) - prefixes} conversations; parked in RAM: {self.table.parked_count} "
            f"({parked_mib:.1f} of {self.table.arena.capacity / 2**20:.0f} MiB)"
        )

    # -- a prompt's sequence ------------------------------------------------------------------

    def assign(
        self,
        tokens: TokenArray,
        *,
        last_turn_start: int,
        reuse: bool,
        adapter: Adapter | None = None,
    ) -> tuple[int, int] | None:
        """A sequence id for a prompt under `adapter`, holding as much of its start as the cache
        has computed under the same adapter.

        Returns (seq_id, shared): the id's cells hold `tokens[:shared]` (at most all but the
        last token, whose logits start the reply). None when no id can be freed. With `reuse`
        off the prompt starts from nothing. The sequence is marked busy until `release`.
        """
        match = self.table.best_match(tokens, adapter) if reuse else Match(0)
        self.table.touch_prefixes_of(tokens, adapter)
        # At least the last prompt token is evaluated again: its logits start the reply.
        shared = min(match.length, len(tokens) - 1)
        entry = match.entry
        if entry is not None and may_take_over(entry, shared):
            self.ctx.seq_rm(entry.seq_id, shared, -1)
            seq_id = entry.seq_id
        else:
            spare = self._new_seq_id(pinned=entry)
            if spare is None:
                return None
            seq_id = spare
            if entry is not None and shared > 0:
                self.ctx.seq_cp(entry.seq_id, seq_id, 0, shared)
            elif match.parked is not None and shared > 0:
                if self.restore(match.parked, seq_id, shared):
                    self.ctx.seq_rm(seq_id, shared, -1)
                else:
                    shared = 0
            else:
                shared = 0
        self.table.put(
            Entry(
                seq_id,
                tokens[:shared],
                "conversation",
                last_turn_start=last_turn_start,
                busy=True,
                adapter=adapter,
            )
        )
        return seq_id, shared

    def grew(self, seq_id: int, tokens: TokenArray) -> None:
        """A busy sequence's cells now hold `tokens` (a prompt chunk was decoded)."""
        entry = self.table.get(seq_id)
        if entry is not None:
            entry.tokens = tokens

    def add_prefix(self, seq_id: int, prefix_len: int, tokens: TokenArray) -> None:
        """Keep `tokens[:prefix_len]` (a persona prefix) of `seq_id` as an entry of its own."""
        prefix_id = self.table.take_id()
        if prefix_id is None:
            return
        source = self.table.get(seq_id)
        self.ctx.seq_cp(seq_id, prefix_id, 0, prefix_len)
        adapter = source.adapter if source is not None else None
        self.table.put(Entry(prefix_id, tokens[:prefix_len].copy(), "prefix", adapter=adapter))

    def release(self, seq_id: int, tokens: TokenArray) -> None:
        """A reply ended: its sequence, holding `tokens`, stays as an idle cache entry."""
        entry = self.table.get(seq_id)
        if entry is None:
            return
        entry.tokens = tokens
        entry.busy = False
        entry.touch()

    def drop(self, seq_id: int) -> None:
        """Forget a sequence and its cells entirely (after an error)."""
        if seq_id >= 0 and self.table.get(seq_id) is not None:
            self.ctx.seq_rm(seq_id)
            self.table.release(seq_id)

    def empty(self) -> None:
        """Park every idle sequence and start cell placement over.

        For a fresh evaluation (an eval case) with nothing else running: llama.cpp's kernels
        round differently with the cells laid out differently, so the same case on the same
        persona gives the same answer only from the same layout.
        """
        while self.evict_one():
            pass
        self.ctx.clear()

    # -- eviction and the RAM park ------------------------------------------------------------

    def evict_one(self) -> bool:
        """Drop the least recently used idle sequence (parking it when worth it)."""
        for entry in self.table.eviction_order():
            if not self._covered(entry):
                self._park(entry)
            self.ctx.seq_rm(entry.seq_id)
            self.table.release(entry.seq_id)
            return True
        return False

    def cool_down(self) -> None:
        """Move idle sequences out of the KV cache beyond `HOT_IDLE_TOKENS`.

        Every cell in the cache costs each decode step an attention-mask check, whoever's it is:
        with 16k cells of idle prefixes a follow-up prompt was evaluated several times slower.
        Parked, the same sequences cost a copy (milliseconds) when they are next needed.
        """
        while self.table.idle_tokens() > HOT_IDLE_TOKENS and self.evict_one():
            pass

    def restore(self, parked: Parked, seq_id: int, shared: int) -> bool:
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

    def _new_seq_id(self, *, pinned: Entry | None = None) -> int | None:
        """A free sequence id, evicting idle entries (but not `pinned`) until one is free."""
        with _pinned(pinned):
            seq_id = self.table.take_id()
            while seq_id is None and self.evict_one():
                seq_id = self.table.take_id()
            return seq_id

    def _cached_base(self, parked: Parked) -> Entry | None:
        """A cached sequence holding `parked`'s persona prefix, restoring the prefix if needed."""
        head = parked.tokens[: parked.base]
        entry = self.table.cached_holding(head, parked.adapter)
        prefix = self.table.parked_prefix(head, parked.adapter) if entry is None else None
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
        entry = Entry(seq_id, prefix.tokens, "prefix", adapter=prefix.adapter)
        self.table.put(entry)
        return entry

    def _load(self, seq_id: int, parked: Parked) -> bool:
        """`llama_state_seq_set_data` from the park, evicting idle sequences until it fits.

        `parked` must be pinned: evictions park other sequences, which may move blocks of the
        park (the view is taken again after each) but never drop a pinned one.
        """
        while not self.ctx.restore_seq(seq_id, self.table.arena.view(parked.offset, parked.nbytes)):
            if not self.evict_one():
                return False
        return True

    def _park(self, entry: Entry) -> None:
        """Copy an entry being evicted into the park; a conversation without its persona prefix.

        The prefix, parked or cached once for all of the persona's conversations, would
        otherwise be stored again with each of them: a 1,500-token persona is 35 MB of KV cells
        with the default model, and a conversation's own turns a few hundred tokens.
        """
        base = (
            self.table.persona_prefix_length(entry.tokens, entry.adapter)
            if entry.kind == "conversation"
            else 0
        )
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
            return self.table.parked_prefix(entry.tokens, entry.adapter) is not None
        return self.table.covers(entry.tokens, besides=entry)


def held_tokens(prompt: TokenArray, generated: list[int], n_past: int) -> TokenArray:
    """The tokens a reply's sequence holds after `n_past` decoded positions: the prompt's
    first `n_past`, or all of it and the decoded part of the reply."""
    if n_past < len(prompt):
        return prompt[:n_past]
    return np.concatenate([prompt, np.asarray(generated[: n_past - len(prompt)], dtype=np.int32)])


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
