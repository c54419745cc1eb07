"""The busy-machine workload of `bots bench engine`: the same streams while another process
keeps one core busy, as a build, a test run or a second service does on a small server.

llama.cpp's decode threads stall at every graph barrier when one of them loses its core
(`bots/engine/cpu_share.py`). Measured: bots as `bots serve` runs it (fewer threads while
others hold cores), bots with its thread count fixed, and llama-server with the same threads;
one stream and several at once (`Workload.busy_streams`), engines taking turns, all under the
same busy process.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from bots.bench.contenders import SERVER_SLOT_CTX, Setup, llama_server, ours_engine, remote, started
from bots.bench.engine_report import OURS, OURS_FIXED_THREADS, SERVER, Row, Target
from bots.bench.engine_workloads import Workload, bench_concurrency
from bots.engine.base import Engine
from bots.engine.batched import BatchedEngine
from bots.engine.llama_native import NativeModel


@contextlib.contextmanager
def busy_core() -> Iterator[None]:
    """Another process spinning on one core until the block ends."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


async def busy_rows(setup: Setup, server: Path | None, w: Workload) -> list[Row]:
    """Aggregate generation tok/s per stream count while one other process holds a core.

    Each bots engine runs alone in this process, started and closed in its turn: two llama.cpp
    contexts alive in one process share its OpenMP threads and slow each other down.
    """
    most = max(w.busy_streams)
    ours: dict[str, Callable[[], BatchedEngine]] = {
        OURS: lambda: ours_engine(setup, parallel=most),
        OURS_FIXED_THREADS: lambda: ours_engine(setup, parallel=most, adapt_threads=False),
    }
    rates: dict[int, dict[str, list[float]]] = {n: {} for n in w.busy_streams}
    vocab = NativeModel(setup.model, vocab_only=True)  # counts prompt tokens; computes nothing

    def count(text: str) -> int:
        return len(vocab.tokenize(text))

    async def measure(name: str, engine: Engine, count: Callable[[str], int], rep: int) -> None:
        for n in w.busy_streams:
            rate, _ = await bench_concurrency(engine, n, count, w, f"busy{rep}")
            rates[n].setdefault(name, []).append(rate)

    async with contextlib.AsyncExitStack() as stack:
        stack.callback(vocab.close)
        theirs: Engine | None = None
        if server is not None:
            args = ["-c", str(SERVER_SLOT_CTX * most), "-np", str(most)]
            url = stack.enter_context(llama_server(server, setup, args))
            theirs = await remote(url, most)
            stack.push_async_callback(theirs.close)
        with busy_core():
            for rep in range(w.busy_repeats):
                for name, make in ours.items():
                    engine = make()
                    async with started(engine):
                        await measure(name, engine, count, rep)
                if theirs is not None:
                    await measure(SERVER, theirs, count, rep)
    rows = []
    for n, by_engine in rates.items():
        medians = {name: statistics.median(v) for name, v in by_engine.items()}
        label = f"busy machine, {n} stream{'s' if n > 1 else ''}"
        target = Target(1.0, SERVER) if n == most else None
        rows.append(Row(label, "aggregate tok/s", "higher", medians.pop(OURS), medians, target))
    return rows
