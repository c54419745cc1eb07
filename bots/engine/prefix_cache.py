"""Which token sequences the KV cache holds, and which a new prompt should start from.

Bookkeeping only (no llama.cpp calls), so the policy is easy to read and test. Every sequence id
of the llama context is either free or holds an `Entry`: a persona prefix (the rendered system
message, shared by all of that persona's conversations) or a conversation (a finished or running
generation: prompt plus reply). A new prompt starts from the entry with the longest common token
prefix; entries that no generation uses are evicted least recently used first, and may be parked
in RAM (their KV cells copied out) within a byte budget.

Matching by tokens makes invalidation automatic: a reloaded persona renders different tokens,
so its old prefix simply stops matching and ages out.
"""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

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

    def touch(self) -> None:
        self.last_used = next(_clock)


@dataclass(eq=False)
class Parked:
    """An evicted entry's KV cells, copied to RAM by `llama_state_seq_get_data`."""

    tokens: TokenArray
    kind: Kind
    last_turn_start: int
    data: ctypes.Array[ctypes.c_uint8]
    last_used: int = field(default_factory=lambda: next(_clock))

    @property
    def nbytes(self) -> int:
        return len(self.data)


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
        self.park_budget_bytes = park_budget_bytes

    @property
    def entries(self) -> Iterable[Entry]:
        return self._entries.values()

    @property
    def parked_bytes(self) -> int:
        return sum(p.nbytes for p in self._parked)

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

    def best_match(self, tokens: TokenArray) -> Match:
        """The entry or parked sequence sharing the longest token prefix with `tokens`.

        Ties go to entries already in the KV cache (no restore needed), and among those to one
        this prompt may take over (its stale tail is then dropped instead of left to age out).
        """
        best = Match(0)
        best_takeover = False
        for entry in self._entries.values():
            n = common_prefix(entry.tokens, tokens)
            takeover = may_take_over(entry, n)
            if n > best.length or (n == best.length and n > 0 and takeover and not best_takeover):
                best, best_takeover = Match(n, entry=entry), takeover
        for parked in self._parked:
            n = common_prefix(parked.tokens, tokens)
            if n > best.length:
                best = Match(n, parked=parked)
        return best

    def has_prefix(self, tokens: TokenArray) -> bool:
        """Whether a persona prefix entry holds exactly `tokens`."""
        return any(
            e.kind == "prefix" and np.array_equal(e.tokens, tokens) for e in self._entries.values()
        )

    def touch_prefixes_of(self, tokens: TokenArray) -> None:
        """Mark every entry that `tokens` extends as used: a persona prefix stays warm while its
        conversations take their own sequences over."""
        for entry in self._entries.values():
            n = len(entry.tokens)
            if 0 < n <= len(tokens) and common_prefix(entry.tokens, tokens) == n:
                entry.touch()

    def eviction_order(self) -> Iterator[Entry]:
        """Idle entries, least recently used first."""
        idle = [e for e in self._entries.values() if not e.busy]
        return iter(sorted(idle, key=lambda e: e.last_used))

    def park(self, entry: Entry, data: ctypes.Array[ctypes.c_uint8]) -> bool:
        """Keep an evicted entry's cells in RAM, dropping older parked ones to fit the budget."""
        if len(data) > self.park_budget_bytes:
            return False
        self._parked.sort(key=lambda p: p.last_used)
        while self._parked and self.parked_bytes + len(data) > self.park_budget_bytes:
            self._parked.pop(0)
        self._parked.append(Parked(entry.tokens, entry.kind, entry.last_turn_start, data))
        return True

    def unpark(self, parked: Parked) -> None:
        """Forget a parked sequence (restored, or dropped meanwhile to fit the budget)."""
        if parked in self._parked:
            self._parked.remove(parked)

    def clear(self) -> None:
        for seq_id in list(self._entries):
            self.release(seq_id)
        self._parked.clear()
