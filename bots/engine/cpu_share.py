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
    """The decode thread count for now; used from the engine thread only."""

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
        self._last = read()
        self._last_at = clock()
        self.current = self.configured
        self.others = 0.0  # cores other processes used over the last interval
        self._paused = False

    def pause(self) -> None:
        """The engine is idle: the next window starts when it decodes again. Others may be
        busy only while it waits (a benchmark's engines taking turns); that is no reason to
        decode with fewer threads."""
        self._paused = True

    def threads(self) -> int:
        """The thread count the next decode should use."""
        now = self._clock()
        if self._last is None or now - self._last_at < INTERVAL_S:
            return self.current
        sample = self._read()
        if sample is None or sample.total <= self._last.total:
            return self.current
        if self._paused:
            self._last, self._last_at, self._paused = sample, now, False
            return self.current
        elapsed = (sample.total - self._last.total) / self.cores  # ticks of one core
        others = (sample.busy - self._last.busy) - (sample.own - self._last.own)
        self._last, self._last_at = sample, now
        self.others = max(0.0, others / elapsed)
        free = self.cores - self.others
        wanted = max(1, min(self.configured, int(free + 0.5)))
        if wanted > self.current and free < self.current + 0.5 + HYSTERESIS:
            return self.current
        if wanted < self.current and free > self.current - 0.5 - HYSTERESIS:
            return self.current
        self.current = wanted
        return self.current
