"""`bots bench engine`: the batched engine against llama.cpp's server and the naive baseline.

One run, one table: every ratio compares figures measured in the same run, on the same model
file, thread count and prompts. The baselines are llama.cpp's own `llama-server` (built from the
llama.cpp that llama-cpp-python vendors, see `llama_server.py`) and `SimpleEngine`, the naive
`Llama.create_chat_completion` engine. Engines take turns (A, B, C, A, B, C, ...) so that load
from other processes on a shared machine falls on all of them alike.

Workloads (sizes in `Workload`):
1. Single stream: prompt and generation tokens/s on an uncached prompt.
2. Follow-up time to first token: personas with long instructions, conversations interleaved at
   random, several turns each; p50/p95 TTFT.
3. Concurrency: N simultaneous streams; aggregate generation tokens/s and median TTFT.
4. Quoting: answers that quote the documents in their prompt, and answers that do not, on bots
   with speculation on and off and on llama-server without and with its n-gram speculation.
5. Busy machine: one and several streams while another process keeps a core busy, on bots
   as it serves (fewer threads while others hold cores) and with its threads fixed, and on
   llama-server.
6. Memory: resident memory of an engine process with 1 and with many personas served.

This module runs them in turn and reads the command line; the engines and how each is launched
are in `contenders.py`, the workloads in `engine_workloads.py`, `engine_quoting.py` and
`engine_busy.py`, the table in `engine_report.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from bots.bench.contenders import (
    ENGINE_N_CTX,
    SERVER_CACHE_REUSE,
    SERVER_SLOT_CTX,
    TTFT_SERVER_SLOTS,
    Setup,
    llama_server,
    naive_engine,
    ours_engine,
    remote,
    started,
)
from bots.bench.engine_busy import busy_rows
from bots.bench.engine_quoting import quoting_rows
from bots.bench.engine_report import (
    NAIVE,
    OURS,
    SERVER,
    Report,
    Row,
    format_report,
    gpu_description,
    load_average,
    machine_description,
)
from bots.bench.engine_workloads import (
    FULL,
    QUICK,
    Workload,
    bench_followups,
    bench_memory,
    bench_single,
    concurrency_rows,
)
from bots.bench.llama_server import installed_binary
from bots.engine.base import Engine
from bots.engine.batched import DEFAULT_KV_CELLS, DEFAULT_PARALLEL
from bots.engine.model_files import default_model_path
from bots.engine.quantize import prepared_model_path

# The Q8_0 copy of the default model that `bots serve` makes on a CPU (model.quantize_q8).
MODEL_CACHE_DIR = Path("~/.cache/bots/models").expanduser()


def server_for_followups(server: Path, setup: Setup) -> contextlib.AbstractContextManager[str]:
    """llama-server as the follow-up workload runs it: a few slots, `--cache-reuse`."""
    slots = TTFT_SERVER_SLOTS
    args = [
        "-c", str(SERVER_SLOT_CTX * slots), "-np", str(slots),
        "--cache-reuse", str(SERVER_CACHE_REUSE),
    ]  # fmt: skip
    return llama_server(server, setup, args)


async def paused_followup_rows(
    setup: Setup, server: Path | None, workload: Workload, say: Callable[[str], None]
) -> list[Row]:
    """The follow-ups with a pause before each message, on a bots engine and a llama-server of
    their own: the first run's persona prefixes would hold most of a shared engine's park."""
    ours = ours_engine(setup, parallel=DEFAULT_PARALLEL)
    async with started(ours), contextlib.AsyncExitStack() as stack:
        engines: dict[str, Engine] = {OURS: ours}
        if server is not None:
            url = stack.enter_context(server_for_followups(server, setup))
            engines[SERVER] = await remote(url, TTFT_SERVER_SLOTS)
            stack.push_async_callback(engines[SERVER].close)
        return await bench_followups(
            engines, ours.count_tokens, workload, {}, say, pause_s=workload.followup_pause_s
        )


async def run_engine_bench(
    model_path: Path | None = None,
    *,
    n_threads: int | None = None,
    flash_attn: str = "auto",
    n_gpu_layers: int = 0,
    workload: Workload = FULL,
    server_binary: Path | None = None,
    with_server: bool = True,
    progress: TextIO = sys.stderr,
) -> Report:
    """Run every workload on the real engines.

    The llama-server rows use `server_binary`, or the one `python -m bots.bench.llama_server`
    built; they are left out when neither exists or `with_server` is False.
    """
    model = model_path or default_model_path()
    setup = Setup(model, n_threads or os.cpu_count() or 1, flash_attn, n_gpu_layers)
    server = (server_binary or installed_binary()) if with_server else None
    notes = [
        f"load average at start: {load_average()}",
        f"flash attention: {flash_attn} for bots and llama-server; the naive engine keeps "
        "llama-cpp-python's default (off)",
    ]
    if n_gpu_layers:
        notes.append(f"GPU: n_gpu_layers {n_gpu_layers} for every engine ({gpu_description()})")

    def say(message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=progress, flush=True)

    rows: list[Row] = []

    def keep(new: list[Row]) -> None:
        # Each figure also goes to the progress log as soon as it is measured, so that a failure
        # in a later workload does not lose the earlier ones.
        for row in new:
            others = "".join(f"; {name} {v:,.1f}" for name, v in row.baselines.items())
            say(f"   {row.workload}, {row.metric}: {OURS} {row.ours:,.1f}{others}")
        rows.extend(new)

    most = max(DEFAULT_PARALLEL, *workload.concurrency)
    # Every stream of the concurrency workload holds its prompt and reply in the KV cache at once.
    per_stream = workload.concurrency_prompt_tokens + workload.concurrency_reply_tokens
    ours = ours_engine(
        setup, parallel=most, kv_cells=max(DEFAULT_KV_CELLS, most * (per_stream + 128))
    )
    naive = naive_engine(setup)
    async with started(ours), started(naive):
        count = ours.count_tokens
        with contextlib.ExitStack() as stack:
            engines: dict[str, Engine] = {OURS: ours, NAIVE: naive}
            if server is not None:
                url = stack.enter_context(
                    llama_server(server, setup, ["-c", str(ENGINE_N_CTX), "-np", "1"])
                )
                engines[SERVER] = await remote(url, 1)
            say("1/7 single stream")
            keep(await bench_single(engines, count, workload))
            if SERVER in engines:
                await engines.pop(SERVER).close()
        with contextlib.ExitStack() as stack:
            engines = {OURS: ours, NAIVE: naive}
            if server is not None:
                url = stack.enter_context(server_for_followups(server, setup))
                engines[SERVER] = await remote(url, TTFT_SERVER_SLOTS)
            say("2/7 follow-up TTFT (the longest part)")
            keep(
                await bench_followups(
                    engines, count, workload, {NAIVE: workload.naive_messages}, say
                )
            )
            if SERVER in engines:
                await engines.pop(SERVER).close()
        say("3/7 concurrency")
        for n in workload.concurrency:
            keep(await concurrency_rows(ours, server, setup, n, count, workload))
    say("4/7 quoting answers")
    quoted, quoting_notes = await quoting_rows(setup, server, workload)
    keep(quoted)
    notes += quoting_notes
    say(f"5/7 follow-up TTFT again, {workload.followup_pause_s:g} s to write each message")
    keep(await paused_followup_rows(setup, server, workload, say))
    say("6/7 busy machine: one other process keeps a core busy")
    keep(await busy_rows(setup, server, workload))
    say("7/7 memory")
    keep([bench_memory(setup, workload)])
    notes.append(f"load average at end: {load_average()}")
    if server is None and with_server:
        notes.append("llama-server not built: run `python -m bots.bench.llama_server` for its rows")
    naive_n = min(workload.naive_messages, workload.conversations * workload.turns)
    notes.append(
        f"naive TTFT: first {naive_n} messages of the same schedule (it re-evaluates every prompt)"
    )
    model_desc = f"{model.name} ({model.stat().st_size / 2**20:.0f} MiB), {setup.threads} threads"
    version = importlib.metadata.version("llama-cpp-python")
    return Report(
        machine_description(),
        f"{model_desc}, llama-cpp-python {version}",
        tuple(notes),
        tuple(rows),
    )


def stream_counts(text: str) -> tuple[int, ...]:
    """`--streams 1,4,16`: positive stream counts, comma-separated."""
    try:
        counts = tuple(int(n) for n in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected counts like 1,4,16,64")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bots.bench.engine [--quick] [--model PATH] [--threads N]`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="a tiny workload, as a smoke test")
    parser.add_argument("--server", type=Path, default=None, help="llama-server binary")
    parser.add_argument(
        "--as-shipped",
        action="store_true",
        help="the default model's Q4_1 file as shipped, not the Q8_0 copy bots serves on a CPU",
    )
    parser.add_argument(
        "--flash-attn",
        choices=("auto", "on", "off"),
        default="auto",
        help="for bots and llama-server alike (model.flash_attn; default auto, as both default)",
    )
    parser.add_argument(
        "--n-gpu-layers",
        type=int,
        default=0,
        help="layers to offload for every engine (-1 = all; needs a CUDA/Metal/Vulkan build); "
        "bots then serves the model file as shipped, as `bots serve` does",
    )
    parser.add_argument(
        "--streams",
        type=stream_counts,
        default=None,
        help="stream counts of the concurrency workload, e.g. 1,4,16,64 (default 1,2,4,8)",
    )
    ns = parser.parse_args(argv)
    workload = QUICK if ns.quick else FULL
    if ns.streams:
        workload = dataclasses.replace(workload, concurrency=ns.streams)
    model = ns.model
    if model is None and not ns.as_shipped and ns.n_gpu_layers == 0:
        model = prepared_model_path(default_model_path(), MODEL_CACHE_DIR, n_threads=ns.threads)
    report = asyncio.run(
        run_engine_bench(
            model,
            n_threads=ns.threads,
            flash_attn=ns.flash_attn,
            n_gpu_layers=ns.n_gpu_layers,
            workload=workload,
            server_binary=ns.server,
        )
    )
    print(format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
