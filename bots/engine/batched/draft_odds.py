"""What a draft is worth on this engine: how often the model keeps drafted tokens, and what a
drafted token costs a step, both measured as the engine runs.

A drafted token is worth decoding when the chance that the model keeps it is higher than its
cost as a share of a step. That share is a property of the machine: on a 2-core CPU (SmolLM2
Q8_0, 1,000 tokens deep) a step of one token took 27 ms and each drafted token added 13 ms, so a
draft token pays only if kept more often than one time in two; on a GPU a step of a few more
tokens costs hardly more than one. The chance is a property of the workload: a 3-token match in
a story ("of the Acme") is a coincidence the model rarely follows, while a reply that has
matched its document for eight tokens is quoting it. So `DraftOdds` keeps, for each length of
the match behind a draft (the tokens before the draft's start that equal the reply's last
ones), how often the first drafted token was kept and how often each later one was once the
one before it was, and times the engine's steps; `length` gives the draft length worth
decoding: zero where no drafted token is worth its cost. One per engine (the model and the
machine are the engine's), on the engine thread only; no llama.cpp calls.
"""

from __future__ import annotations

from dataclasses import dataclass

# Matches longer than this count as this long: past it, the length says no more.
MATCH_CAP = 12
# Counts start from one kept and one lost of each kind (a 50 % prior worth two drafts), and are
# halved when a length bucket reaches `MEMORY` tries, so the odds follow a changing workload.
MEMORY = 200
# Weight of the newest step in the step-time averages.
ALPHA = 0.1
# A match length whose drafts stopped paying is still drafted once in this many chances, so
# that its odds can recover when the workload changes (a one-draft cost every so often).
EXPLORE = 32


@dataclass
class _Counts:
    tried: float = 2.0
    kept: float = 1.0

    @property
    def odds(self) -> float:
        return self.kept / self.tried

    def add(self, tried: int, kept: int) -> None:
        self.tried += tried
        self.kept += kept
        if self.tried > MEMORY:
            self.tried /= 2
            self.kept /= 2


class DraftOdds:
    """The engine's draft statistics and step costs; `length` says how long a draft to make."""

    def __init__(self) -> None:
        # Per match length: the first drafted token, and a later one after a kept one.
        self._first = [_Counts() for _ in range(MATCH_CAP + 1)]
        self._next = [_Counts() for _ in range(MATCH_CAP + 1)]
        self._declined = [0] * (MATCH_CAP + 1)
        self._step_s: dict[int, float] = {}  # streams -> seconds of a step without drafts
        self._token_s: float | None = None  # what one drafted token adds to a step

    def cost(self, streams: int) -> float:
        """A drafted token's cost as a share of a step of `streams` streams (0 until measured)."""
        step = self._step_s.get(streams)
        if step is None or self._token_s is None or step <= 0:
            return 0.0
        return self._token_s / step

    def length(self, match: int, most: int, streams: int = 1) -> int:
        """How many of up to `most` drafted tokens are worth decoding behind a `match`-token
        match: while the chance of reaching and keeping the next one beats its cost (and one,
        now and then, where none does)."""
        bucket = min(match, MATCH_CAP)
        cost = self.cost(streams)
        chance = self._first[bucket].odds
        then = self._next[bucket].odds
        n = 0
        while n < most and chance > cost:
            n += 1
            chance *= then
        if n == 0 and most > 0:
            self._declined[bucket] += 1
            if self._declined[bucket] >= EXPLORE:
                self._declined[bucket] = 0
                return 1
        return n

    def drafted(self, match: int, drafted: int, kept: int) -> None:
        """How a draft behind a `match`-token match went: `kept` of `drafted` tokens."""
        bucket = min(match, MATCH_CAP)
        self._first[bucket].add(1, int(kept > 0))
        if kept > 0 and drafted > 1:
            # Tokens after the first that were reached (the one before them kept), and kept.
            reached = min(drafted, kept + 1) - 1
            self._next[bucket].add(reached, kept - 1)

    def stepped(self, streams: int, tokens: int, seconds: float) -> None:
        """A step of `streams` streams and no prompt chunk: `tokens` in all (drafts beyond one
        per stream) took `seconds`, sampling included."""
        step = self._step_s.get(streams)
        if tokens == streams:
            self._step_s[streams] = seconds if step is None else step + ALPHA * (seconds - step)
            return
        if step is None:
            return
        per_token = max(0.0, (seconds - step) / (tokens - streams))
        last = self._token_s
        self._token_s = per_token if last is None else last + ALPHA * (per_token - last)
