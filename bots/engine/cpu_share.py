"""How many decode threads the CPU can run now: fewer while other processes hold its cores.

llama.cpp's CPU threads meet at a barrier after every node of the compute graph (hundreds per
decode) and spin while they wait. When another process takes the core one of them runs on, every
barrier waits until the scheduler gives that thread its core back. Measured on 2 cores (SmolLM2
Q8_0, 4-token decode steps): 24.5 ms with 2 threads on a quiet machine; 179 ms with 2 threads
and 45 ms with 1 while one other process kept a core busy (256-token prompt chunks: 1,092 vs
699 ms). Spinning less (`OMP_WAIT_POLICY=passive`, `GOMP_SPINCOUNT=0`) fixes the busy case but
doubles the quiet one (52-54 ms), and libgomp reads it once at start. The thread count can change
between any two decodes (`llama_set_n_threads`), so the engine asks `CpuShare` before each one:
as many threads as the cores others leave free, never more than configured, never fewer than 1.

"Others" is the whole machine's busy time (steal included: a VM's host taking the core is the
same stall) minus this process's own, from /proc, sampled at most every `INTERVAL_S` while the
engine decodes. Where /proc cannot be read (not Linux), the configured count stays.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

INTERVAL_S = 0.5
# A change needs the free cores this far past the halfway mark between two counts, so that a
# load hovering near it does not switch the count every sample.
HYSTERESIS = 0.2


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative CPU time in clock ticks: all cores' busy and total time, and this process's."""

    busy: int
    total: int
    own: int


def read_cpu_times(proc: Path = Path("/proc")) -> CpuTimes | None:
    """The machine's and this process's CPU ticks from /proc; None where they cannot be read."""
    try:
        machine = (proc / "stat").read_text().split("\n", 1)[0].split()
        own = (proc / "self" / "stat").read_text()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal guest guest_nice (guest is in user).
    ticks = [int(value) for value in machine[1:9]]
    idle = ticks[3] + ticks[4]
    # Fields after the parenthesised command name (which may hold spaces): utime is the 12th.
    fields = own.rsplit(")", 1)[1].split()
    return CpuTimes(busy=sum(ticks) - idle, total=sum(ticks), own=int(fields[11]) + int(fields[12]))


class CpuShare:
    """The decode thread count for now; used from the engine thread only.

    The load is measured over the engine's decoding only: a stretch runs from the first decode
    after a pause to the next pause, and stretches add up until they span `INTERVAL_S`. Replies
    shorter than that, with idle time between them, are measured all the same."""

    def __init__(
        self,
        threads: int,
        *,
        cores: int | None = None,
        read: Callable[[], CpuTimes | None] = read_cpu_times,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.configured = max(1, threads)
        self.cores = cores or os.cpu_count() or 1
        self._read = read
        self._clock = clock
        self.current = self.configured
        self.others = 0.0  # cores other processes used over the last full window
        # The open stretch (None while paused) and what the closed ones of this window add up to.
        self._start: CpuTimes | None = None
        self._start_at = 0.0
        self._window_s = 0.0
        self._others_ticks = 0
        self._total_ticks = 0
        self._begin(clock())
        self._enabled = self._start is not None  # no /proc here: the configured count stays

    def pause(self) -> None:
        """The engine is idle: its stretch ends here. Others may be busy only while it waits
        (a benchmark's engines taking turns); that is no reason to decode with fewer threads."""
        start, self._start = self._start, None
        if start is not None and (sample := self._read()) is not None:
            self._add(start, sample, self._clock())

    def threads(self) -> int:
        """The thread count the next decode should use."""
        now = self._clock()
        start = self._start
        if start is None:
            if self._enabled:
                self._begin(now)
            return self.current
        if self._window_s + (now - self._start_at) < INTERVAL_S:
            return self.current
        sample = self._read()
        if sample is None:
            return self.current
        self._add(start, sample, now)
        self._start, self._start_at = sample, now
        if self._total_ticks <= 0:
            return self.current
        self.others = max(0.0, self._others_ticks / (self._total_ticks / self.cores))
        self._window_s, self._others_ticks, self._total_ticks = 0.0, 0, 0
        free = self.cores - self.others
        wanted = max(1, min(self.configured, int(free + 0.5)))
        if wanted > self.current and free < self.current + 0.5 + HYSTERESIS:
            return self.current
        if wanted < self.current and free > self.current - 0.5 - HYSTERESIS:
            return self.current
        self.current = wanted
        return self.current

    def _begin(self, now: float) -> None:
        self._start, self._start_at = self._read(), now

    def _add(self, start: CpuTimes, sample: CpuTimes, now: float) -> None:
        """Count the stretch from `start` to `sample` into the window."""
        self._others_ticks += (sample.busy - start.busy) - (sample.own - start.own)
        self._total_ticks += sample.total - start.total
        self._window_s += now - self._start_at
