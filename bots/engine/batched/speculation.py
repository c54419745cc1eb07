"""Prompt-lookup (n-gram) drafts: the tokens a reply is likely to copy from its own context.

A grounded persona's answer often repeats its retrieved documents, its instructions or the
conversation word for word. When the reply's last `NGRAM` tokens occurred earlier in its context
(prompt and reply so far), the tokens that followed them then are a cheap guess at what comes
next. The scheduler appends such a draft to the sequence's next token in the step's one
`llama_decode`, with logits at every position, and keeps the longest prefix the model agrees
with (see `scheduler.py`, `_accept`): several tokens for the price of one step when the reply
quotes, one extra position per drafted token when it does not.

`Drafter` keeps one reply's index and its draft budget, which adapts to what was accepted so that
replies that do not quote stop paying: a draft is made only where an n-gram match exists, its
length shrinks to what was accepted, and after poor drafts (less than half accepted) in a row
the drafter pauses for longer and longer. With the engine's `DraftOdds` (draft_odds.py) it also
drafts only as many tokens as are worth their measured cost, given how drafts behind matches as
long as this one went: on a 2-core CPU each drafted token adds half a step, so a coincidental
three-token match in a story is not drafted while a reply eight tokens into a quote is. No
llama.cpp calls: testable alone, like `prefix_cache.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from bots.engine.batched.draft_odds import MATCH_CAP, DraftOdds
from bots.engine.llama_native import TokenArray

SpeculationMode = Literal["ngram", "off"]
SPECULATION_MODES: tuple[SpeculationMode, ...] = ("ngram", "off")
# Tokens the reply's end must share with an earlier place in its context to be drafted from: one
# or two tokens match everywhere ("of the"), three already mostly match where the text repeats.
NGRAM = 3
# Token ids packed three to an int64 key: room for vocabularies of up to 2**21 tokens.
_KEY_BITS = 21
DEFAULT_DRAFT_MAX = 16
# Steps with more streams than this draft nothing. A step of several streams pays for every draft
# token while the step a kept draft saves is shared: on 2 cores (Q8_0, 128-token greedy replies,
# on vs off) quoting answers gained 1.61x alone and 1.19x two at a time but lost 5 % four at a
# time, and answers that quote nothing lost 1 %, 6 % and 10 %. vLLM has the same rule
# (`disable_by_batch_size`). On a GPU, where a step's cost hardly grows with its tokens, a
# larger value is likely right (not measured).
DEFAULT_DRAFT_MAX_STREAMS = 2
# A draft is never cut below this many tokens: a step with a draft costs a fixed part more than
# one without (another matrix kernel), which a one-token draft rarely pays back.
DRAFT_MIN = 2
# After n poor drafts in a row the drafter waits 2**(n+1) - 1 steps before the next (n capped
# here): a reply that does not quote pays for about one draft in every 2**(MAX_BACKOFF+1) steps.
MAX_BACKOFF = 5


@dataclass(frozen=True)
class Speculation:
    """How the engine drafts: `mode` "ngram" (prompt lookup) or "off"; at most `draft_max`
    tokens per sequence and step, in steps of at most `max_streams` streams."""

    mode: SpeculationMode = "ngram"
    draft_max: int = DEFAULT_DRAFT_MAX
    max_streams: int = DEFAULT_DRAFT_MAX_STREAMS

    def __post_init__(self) -> None:
        if self.mode not in SPECULATION_MODES:
            raise ValueError(f"speculation mode {self.mode!r}: one of {SPECULATION_MODES}")
        if self.draft_max < 1:
            raise ValueError("draft_max must be >= 1")
        if self.max_streams < 1:
            raise ValueError("max_streams must be >= 1")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


def _keys(tokens: TokenArray) -> list[int]:
    """The key of each n-gram of `tokens`, in order (key i: tokens[i : i + NGRAM])."""
    t = tokens.astype(np.int64)
    keys = t[: len(t) - NGRAM + 1].copy()
    for k in range(1, NGRAM):
        keys = (keys << _KEY_BITS) | t[k : len(t) - NGRAM + 1 + k]
    out: list[int] = keys.tolist()
    return out


class Drafter:
    """One reply's n-gram index over its context, and its adaptive draft budget."""

    def __init__(self, prompt: TokenArray, draft_max: int, odds: DraftOdds | None = None) -> None:
        self._tokens: list[int] = prompt.tolist()
        self._odds = odds
        self._match = 0  # the length of the match behind the last draft
        # n-gram key -> where the token after its latest occurrence is; the context's own last
        # n-gram has no next token yet, so it is indexed only once the next one arrives.
        keys = _keys(prompt)[:-1] if len(prompt) > NGRAM else []
        self._next: dict[int, int] = dict(zip(keys, range(NGRAM, len(prompt)), strict=True))
        self._draft_max = draft_max
        self.budget = draft_max
        self._misses = 0  # rejected drafts in a row
        self._pause = 0  # steps to wait before the next draft

    def push(self, token: int) -> None:
        """One more token of the reply (sampled, whether or not it was decoded yet)."""
        tokens = self._tokens
        if len(tokens) >= NGRAM:
            self._next[self._key(len(tokens) - NGRAM)] = len(tokens)
        tokens.append(token)

    def draft(self, limit: int, streams: int = 1) -> list[int]:
        """Up to min(budget, `limit`) tokens that followed the context's last n-gram earlier;
        with `odds`, only as many as are worth their cost in a step of `streams` streams."""
        if self._pause:
            self._pause -= 1
            return []
        n = min(self.budget, limit)
        tokens = self._tokens
        if n <= 0 or len(tokens) < NGRAM:
            return []
        start = self._next.get(self._key(len(tokens) - NGRAM))
        if start is None:
            return []
        self._match = _match_length(tokens, start)
        if self._odds is not None:
            worth = self._odds.length(self._match, n, streams)
            if worth == 0:
                return []
            n = min(n, max(worth, DRAFT_MIN))
        return tokens[start : start + n]

    def verified(self, drafted: int, accepted: int) -> None:
        """How a draft went: grow the budget after a full acceptance, shrink it after a miss."""
        if self._odds is not None:
            self._odds.drafted(self._match, drafted, accepted)
        if accepted == drafted:
            self._misses = 0
            self.budget = min(self._draft_max, self.budget * 2)
            return
        self.budget = max(DRAFT_MIN, min(self.budget, accepted + 1))
        if 2 * accepted >= drafted:
            self._misses = 0
            return
        self._misses = min(self._misses + 1, MAX_BACKOFF)
        self._pause = (1 << (self._misses + 1)) - 1

    def _key(self, i: int) -> int:
        key = 0
        for token in self._tokens[i : i + NGRAM]:
            key = (key << _KEY_BITS) | token
        return key


def _match_length(tokens: list[int], start: int) -> int:
    """How many tokens before `start` equal the context's last ones (at least the n-gram), up
    to `MATCH_CAP`."""
    end = len(tokens)
    n = NGRAM
    while n < MATCH_CAP and start - 1 - n >= 0 and tokens[start - 1 - n] == tokens[end - 1 - n]:
        n += 1
    return n
