"""Which token sequences the KV cache holds, and which a new prompt should start from.

Bookkeeping only (no llama.cpp calls), so the policy is easy to read and test. Every sequence id
of the llama context is either free or holds an `Entry`: a persona prefix (the rendered system
message, shared by all of that persona's conversations) or a conversation (a finished or running
generation: prompt plus reply). A new prompt starts from the entry with the longest common token
prefix; entries that no generation uses are evicted least recently used first, and may be parked
in RAM (their KV cells copied out) in an arena of fixed size reserved at start.

Matching by tokens makes invalidation automatic: a reloaded persona renders different tokens,
so its old prefix simply stops matching and ages out. Every entry also records the LoRA adapter
its cells were computed under (an adapter on k or v changes them): a prompt matches only entries
of its own adapter, so switching a persona's adapter is the same automatic invalidation.
"""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from bots.engine.base import Adapter
from bots.engine.llama_native import TokenArray

Kind = Literal["prefix", "conversation"]

_clock = itertools.count()


def common_prefix(a: TokenArray, b: TokenArray) -> int:
    """Length of the longest common prefix of two token arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


def _starts_with(tokens: TokenArray, head: TokenArray) -> bool:
    n = len(head)
    return len(tokens) >= n and common_prefix(tokens, head) == n


def may_take_over(entry: Entry, shared: int) -> bool:
    """Whether a prompt sharing `shared` tokens with `entry` may reuse its sequence in place.

    Only an idle conversation whose whole history (everything before its last user message) the
    prompt repeats: that is the same conversation's next turn. Anything else is copied, so the
    other conversation keeps its cache.
    """
    return (
        entry.kind == "conversation"
        and not entry.busy
        and shared > 0
        and shared >= entry.last_turn_start
    )


@dataclass(eq=False)
class Entry:
    """A sequence id's contents: tokens at positions 0..len-1 of the KV cache."""

    seq_id: int
    tokens: TokenArray
    kind: Kind
    # Where the prompt's last user message starts: a later prompt that shares at least this much
    # is the same conversation's follow-up, so it may take this sequence over instead of copying.
    last_turn_start: int = 0
    busy: bool = False
    last_used: int = field(default_factory=lambda: next(_clock))
    adapter: Adapter | None = None  # what the cells were computed under

    def touch(self) -> None:
        self.last_used = next(_clock)


@dataclass(eq=False)
class Parked:
    """An evicted entry's KV cells, copied by `llama_state_seq_get_data` into the park arena.

    A conversation is parked without its persona prefix (positions before `base`): that prefix
    is parked or cached once for all of the persona's conversations, and is copied back under the
    conversation's own cells when it is restored.
    """

    tokens: TokenArray
    kind: Kind
    last_turn_start: int
    offset: int
    nbytes: int
    base: int = 0
    # Being copied back: its bytes must stay where they are until then.
    busy: bool = False
    last_used: int = field(default_factory=lambda: next(_clock))
    adapter: Adapter | None = None

    def touch(self) -> None:
        self.last_used = next(_clock)


class Arena:
    """RAM reserved once, at start, for parked sequences; blocks are placed first fit.

    Reserved and touched up front rather than allocated per sequence: the service's memory need
    is known (and fails) when it starts, not when the fiftieth persona arrives, it does not grow
    with the number of personas, and tens of megabytes allocated and freed per message do not
    fragment the heap.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(capacity, 0)
        self._buf = (ctypes.c_uint8 * max(self.capacity, 1))()
        # Zero-filled allocations may be mapped lazily: writing makes the pages resident now.
        ctypes.memset(self._buf, 0, self.capacity)
        self._blocks: dict[int, int] = {}  # offset -> size

    @property
    def used(self) -> int:
        return sum(self._blocks.values())

    def find(self, size: int) -> int | None:
        """The lowest offset with `size` free bytes, or None."""
        start = 0
        for offset in sorted(self._blocks):
            if offset - start >= size:
                return start
            start = offset + self._blocks[offset]
        return start if self.capacity - start >= size else None

    def take(self, offset: int, size: int) -> None:
        self._blocks[offset] = size

    def release(self, offset: int) -> None:
        self._blocks.pop(offset, None)

    def move(self, src: int, dst: int, size: int) -> None:
        """Move a block to a lower free offset (the ranges may overlap)."""
        base = ctypes.addressof(self._buf)
        ctypes.memmove(base + dst, base + src, size)
        del self._blocks[src]
        self._blocks[dst] = size

    def view(self, offset: int, size: int) -> ctypes.Array[ctypes.c_uint8]:
        """The block as a ctypes array sharing the arena's memory (for llama.cpp to fill/read)."""
        return (ctypes.c_uint8 * size).from_buffer(self._buf, offset)


@dataclass(frozen=True)
class Match:
    """The best starting point for a prompt: an entry in the KV cache or a parked one."""

    length: int
    entry: Entry | None = None
    parked: Parked | None = None


class SequenceTable:
    """Sequence ids, their entries and the RAM park; owned by the engine's worker thread."""

    def __init__(self, n_seq: int, park_budget_bytes: int) -> None:
        self._free = list(range(n_seq - 1, -1, -1))
        self._entries: dict[int, Entry] = {}
        self._parked: list[Parked] = []
        self.arena = Arena(park_budget_bytes)

    @property
    def entries(self) -> Iterable[Entry]:
        return self._entries.values()

    @property
    def parked_bytes(self) -> int:
        return self.arena.used

    @property
    def parked_count(self) -> int:
        return len(self._parked)

    def has_free_id(self) -> bool:
        return bool(self._free)

    def take_id(self) -> int | None:
        return self._free.pop() if self._free else None

    def put(self, entry: Entry) -> None:
        self._entries[entry.seq_id] = entry

    def get(self, seq_id: int) -> Entry | None:
        return self._entries.get(seq_id)

    def release(self, seq_id: int) -> None:
        """Forget the entry and free its id (the caller clears its KV cells)."""
        self._entries.pop(seq_id, None)
        self._free.append(seq_id)

    def best_match(self, tokens: TokenArray, adapter: Adapter | None = None) -> Match:
        """The entry or parked sequence of `adapter` sharing the longest token prefix with
        `tokens`.

        Ties go to entries already in the KV cache (no restore needed), and among those to one
        this prompt may take over (its stale tail is then dropped instead of left to age out).
        """
        best = Match(0)
        best_takeover = False
        for entry in self._entries.values():
            if entry.adapter != adapter:
                continue
            n = common_prefix(entry.tokens, tokens)
            takeover = may_take_over(entry, n)
            if n > best.length or (n == best.length and n > 0 and takeover and not best_takeover):
                best, best_takeover = Match(n, entry=entry), takeover
        for parked in self._parked:
            n = common_prefix(parked.tokens, tokens) if parked.adapter == adapter else 0
            if n > best.length:
                best = Match(n, parked=parked)
        return best

    def has_prefix(self, tokens: TokenArray, adapter: Adapter | None = None) -> bool:
        """Whether a persona prefix of `adapter`, cached or parked, holds exactly `tokens`."""
        return self.parked_prefix(tokens, adapter) is not None or any(
            e.kind == "prefix" and e.adapter == adapter and np.array_equal(e.tokens, tokens)
            for e in self._entries.values()
        )

    def parked_prefix(self, tokens: TokenArray, adapter: Adapter | None = None) -> Parked | None:
        """The parked persona prefix of `adapter` holding exactly `tokens`, if any."""
        for parked in self._parked:
            if (
                parked.kind == "prefix"
                and parked.adapter == adapter
                and np.array_equal(parked.tokens, tokens)
            ):
                return parked
        return None

    def persona_prefix_length(self, tokens: TokenArray, adapter: Adapter | None = None) -> int:
        """Length of the longest persona prefix of `adapter`, cached or parked, that `tokens`
        begin with."""
        return max(
            (
                len(e.tokens)
                for e in self._held(adapter)
                if e.kind == "prefix" and _starts_with(tokens, e.tokens)
            ),
            default=0,
        )

    def cached_holding(self, tokens: TokenArray, adapter: Adapter | None = None) -> Entry | None:
        """A cached entry of `adapter` whose tokens begin with all of `tokens` (its cells can be
        copied)."""
        for entry in self._entries.values():
            if entry.adapter == adapter and _starts_with(entry.tokens, tokens):
                return entry
        return None

    def covers(self, tokens: TokenArray, *, besides: Entry) -> bool:
        """Whether a sequence other than `besides`, of its adapter, cached or parked, starts with
        all of `tokens` (parking `besides` would then be waste)."""
        return any(
            e is not besides and _starts_with(e.tokens, tokens) for e in self._held(besides.adapter)
        )

    def _held(self, adapter: Adapter | None) -> list[Entry | Parked]:
        held: list[Entry | Parked] = [*self._parked, *self._entries.values()]
        return [h for h in held if h.adapter == adapter]

    def touch_prefixes_of(self, tokens: TokenArray, adapter: Adapter | None = None) -> None:
        """Mark every entry and parked persona prefix of `adapter` that `tokens` extends as used:
        a persona prefix stays warm while its conversations take their own sequences over."""
        for held in self._held(adapter):
            wanted = held.kind == "prefix" or isinstance(held, Entry)
            if wanted and len(held.tokens) and _starts_with(tokens, held.tokens):
                held.touch()

    def idle_tokens(self) -> int:
        """Tokens held by idle entries (shared cells counted once per entry: an upper bound)."""
        return sum(len(e.tokens) for e in self._entries.values() if not e.busy)

    def eviction_order(self) -> Iterator[Entry]:
        """Idle entries, least recently used first."""
        idle = [e for e in self._entries.values() if not e.busy]
        return iter(sorted(idle, key=lambda e: e.last_used))

    def make_room(self, size: int, kind: Kind) -> int | None:
        """An arena offset for `size` bytes, dropping parked sequences to make room.

        Parked conversations go first, least recently used first; persona prefixes, shared by
        every conversation of their persona, give way only to other prefixes. None when the
        sequence cannot fit (then it is simply not parked, and nothing was dropped for it).
        """
        victims = sorted(
            (
                p
                for p in self._parked
                if not p.busy and (kind == "prefix" or p.kind == "conversation")
            ),
            key=lambda p: (p.kind == "prefix", p.last_used),
        )
        kept = self.arena.used - sum(p.nbytes for p in victims)
        if self.arena.capacity - kept < size:
            return None
        while self.arena.capacity - self.arena.used < size:
            self.unpark(victims.pop(0))
        offset = self.arena.find(size)
        if offset is None:  # enough bytes, in pieces: slide the blocks together
            self._compact()
            offset = self.arena.find(size)
        return offset

    def _compact(self) -> None:
        start = 0
        for parked in sorted(self._parked, key=lambda p: p.offset):
            if parked.offset != start:
                self.arena.move(parked.offset, start, parked.nbytes)
                parked.offset = start
            start += parked.nbytes

    def add_parked(self, entry: Entry, offset: int, size: int, *, base: int = 0) -> Parked:
        """Record `entry`'s cells from position `base` on, written at `offset` of the arena (see
        `make_room`)."""
        self.arena.take(offset, size)
        parked = Parked(
            entry.tokens,
            entry.kind,
            entry.last_turn_start,
            offset,
            size,
            base,
            adapter=entry.adapter,
        )
        self._parked.append(parked)
        return parked

    def unpark(self, parked: Parked) -> None:
        """Forget a parked sequence and free its bytes."""
        if parked in self._parked:
            self._parked.remove(parked)
            self.arena.release(parked.offset)

    def clear(self) -> None:
        for seq_id in list(self._entries):
            self.release(seq_id)
        for parked in list(self._parked):
            self.unpark(parked)
