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
4. Memory: resident memory of an engine process with 1 and with many personas served.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

from bots.bench.llama_server import installed_binary, running_llama_server
from bots.bench.workload import interleaved_schedule, persona_instructions, turn_messages
from bots.engine.base import ChatMessage, Engine, GenerationRequest
from bots.engine.batched import (
    DEFAULT_KV_CELLS,
    DEFAULT_PARALLEL,
    DEFAULT_QUEUE_SIZE,
    BatchedEngine,
)
from bots.engine.llama_native import amx_kernels_built
from bots.engine.model_files import default_model_path
from bots.engine.quantize import prepared_model_path
from bots.engine.remote import RemoteEngine
from bots.engine.supervised import SupervisedEngine
from bots.settings import ModelSettings, Settings

Better = Literal["higher", "lower"]
OURS = "bots"
SERVER = "llama-server"
NAIVE = "naive"
SEED = 1234
ENGINE_N_CTX = 8192
SERVER_SLOT_CTX = 4096
# llama-server's KV reuse across requests by shifting cached chunks of at least this many tokens.
SERVER_CACHE_REUSE = 256
TTFT_SERVER_SLOTS = 4
REMOTE_TIMEOUT_S = 600.0
# The Q8_0 copy of the default model that `bots serve` makes on a CPU (model.quantize_q8).
MODEL_CACHE_DIR = Path("~/.cache/bots/models").expanduser()


@dataclass(frozen=True)
class Workload:
    """Sizes of the benchmark; the defaults are the issue's, `QUICK` is a smoke test."""

    single_prompt_tokens: int = 1000
    single_reply_tokens: int = 128
    single_repeats: int = 3
    persona_tokens: int = 1500
    personas: int = 10
    conversations: int = 20
    turns: int = 5
    knowledge_tokens: int = 150
    reply_tokens: int = 32
    naive_messages: int = 40  # the naive baseline pays the full prompt every time: a sample
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    concurrency_prompt_tokens: int = 300
    concurrency_reply_tokens: int = 64
    # Runs per stream count, alternating engines; the median counts (one run varies by +-5 %).
    concurrency_repeats: int = 3
    memory_personas: int = 50


QUICK = Workload(
    single_prompt_tokens=200,
    single_reply_tokens=16,
    single_repeats=1,
    persona_tokens=200,
    personas=2,
    conversations=3,
    turns=2,
    knowledge_tokens=40,
    reply_tokens=8,
    naive_messages=3,
    concurrency=(1, 2),
    concurrency_prompt_tokens=60,
    concurrency_reply_tokens=8,
    concurrency_repeats=1,
    memory_personas=3,
)


@dataclass(frozen=True)
class Setup:
    """What every engine in the run shares: the model file, CPU threads, flash attention and
    GPU layers (`n_gpu_layers`, llama-server's `-ngl`)."""

    model: Path
    threads: int
    flash_attn: str = "auto"
    n_gpu_layers: int = 0


@dataclass(frozen=True)
class Row:
    """One measured figure of ours against the baselines measured alongside it."""

    workload: str
    metric: str
    better: Better
    ours: float
    baselines: dict[str, float] = field(default_factory=dict)
    target: str = ""

    def ratio(self, baseline: str) -> float | None:
        """How many times better ours is (>1: better), whatever the metric's direction."""
        other = self.baselines.get(baseline)
        if other is None or other <= 0 or self.ours <= 0:
            return None
        return self.ours / other if self.better == "higher" else other / self.ours


@dataclass(frozen=True)
class Report:
    machine: str
    model: str
    notes: tuple[str, ...]
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class Sample:
    """One request as its client saw it."""

    ttft_ms: float
    total_ms: float
    prompt_tokens: int
    completion_tokens: int


async def timed(engine: Engine, request: GenerationRequest) -> tuple[str, Sample]:
    """Stream one request; time to the first text and to the end, from the client's side."""
    started = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    prompt = completion = 0
    async for piece in engine.stream(request):
        if piece.text:
            first = first or time.perf_counter()
            text.append(piece.text)
        if piece.usage is not None:
            prompt, completion = piece.usage.prompt_tokens, piece.usage.completion_tokens
    end = time.perf_counter()
    first = first or end
    sample = Sample((first - started) * 1000, (end - started) * 1000, prompt, completion)
    return "".join(text), sample


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def machine_description() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    return "n/a"


# -- engines ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def started(engine: Engine) -> AsyncIterator[Engine]:
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


@contextlib.contextmanager
def llama_server(binary: Path, setup: Setup, args: Sequence[str]) -> Iterator[str]:
    """llama-server with our thread count, flash attention and GPU layers; weight repacking
    off where our engine has it off."""
    threads = str(setup.threads)
    common = ["-t", threads, "-tb", threads, "-fa", setup.flash_attn, "--no-webui"]
    common += ["-ngl", str(setup.n_gpu_layers)]
    if amx_kernels_built():
        common.append("--no-repack")
    with running_llama_server(binary, setup.model, args=[*common, *args]) as url:
        yield url


def ours_engine(setup: Setup, *, parallel: int, kv_cells: int = DEFAULT_KV_CELLS) -> BatchedEngine:
    """The batched engine on `setup`, queueing at least as many requests as it runs at once."""
    return BatchedEngine(
        setup.model,
        n_ctx=ENGINE_N_CTX,
        n_threads=setup.threads,
        n_gpu_layers=setup.n_gpu_layers,
        flash_attn=setup.flash_attn,
        parallel=parallel,
        queue_size=max(DEFAULT_QUEUE_SIZE, parallel),
        kv_cells=kv_cells,
    )


def gpu_description() -> str:
    """The GPU's name and memory as nvidia-smi reports them, where it is installed."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no nvidia-smi"
    query = [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    result = subprocess.run(query, capture_output=True, text=True, check=False)
    return result.stdout.strip().replace("\n", "; ") or "nvidia-smi printed nothing"


def naive_engine(setup: Setup) -> Engine:
    """`SimpleEngine` in a worker process of its own, as llama-server runs in its own.

    In the benchmark's process, a second llama.cpp context that has run once halves the batched
    engine's decoding speed afterwards (measured 38.6 -> 21.9 tok/s): both drive OpenMP thread
    teams on the same two cores. The pipe costs the baseline 2-4 % (the supervisor's overhead).
    """
    settings = Settings(
        model=ModelSettings(
            path=str(setup.model),
            engine="simple",
            n_ctx=ENGINE_N_CTX,
            n_threads=setup.threads,
            n_gpu_layers=setup.n_gpu_layers,
            quantize_q8=False,  # `model` is already the file every engine gets
            timeout_s=REMOTE_TIMEOUT_S,
            watchdog_s=REMOTE_TIMEOUT_S,
        )
    )
    return SupervisedEngine(settings, setup.model)


async def remote(url: str, parallel: int) -> RemoteEngine:
    engine = RemoteEngine(
        url, model="bench", timeout_s=REMOTE_TIMEOUT_S, parallel=parallel, queue_size=64
    )
    await engine.start()
    return engine


# -- 1. single stream ------------------------------------------------------------------------


def _filler(count: Callable[[str], int], tokens: int, tag: str) -> str:
    return persona_instructions(zlib.crc32(tag.encode()) % 1000, tokens, count, seed=SEED)


async def bench_single(
    engines: dict[str, Engine], count: Callable[[str], int], w: Workload
) -> list[Row]:
    """Uncached prompt, then a long reply; every repeat starts with a new prompt."""
    samples: dict[str, list[Sample]] = {name: [] for name in engines}
    for rep in range(w.single_repeats):
        for name, engine in engines.items():
            system = f"Run {rep}. " + _filler(count, w.single_prompt_tokens, f"s{rep}")
            request = GenerationRequest(
                messages=(
                    ChatMessage("system", system),
                    ChatMessage("user", "Write a long, detailed story about the Acme office."),
                ),
                max_tokens=w.single_reply_tokens,
                temperature=0.0,
                repeat_penalty=1.0,
                timeout_s=REMOTE_TIMEOUT_S,
            )
            samples[name].append((await timed(engine, request))[1])

    def prompt_rate(s: Sample) -> float:
        return s.prompt_tokens / (s.ttft_ms / 1000)

    def gen_rate(s: Sample) -> float:
        gen_ms = s.total_ms - s.ttft_ms
        return (s.completion_tokens - 1) / (gen_ms / 1000) if gen_ms > 0 else 0.0

    rows = []
    for metric, rate, target in (
        ("generation tok/s", gen_rate, ">= 0.95x llama-server"),
        ("prompt tok/s", prompt_rate, ">= 0.95x llama-server"),
    ):
        medians = {n: statistics.median(rate(s) for s in ss) for n, ss in samples.items()}
        rows.append(
            Row(
                "single stream",
                metric,
                "higher",
                medians.pop(OURS),
                medians,
                target,
            )
        )
    return rows


# -- 2. follow-up time to first token --------------------------------------------------------


async def bench_followups(
    engines: dict[str, Engine],
    count: Callable[[str], int],
    w: Workload,
    limits: dict[str, int],
    say: Callable[[str], None],
) -> list[Row]:
    """The interleaved conversations; each engine keeps its own replies as history."""
    instructions = [
        persona_instructions(p, w.persona_tokens, count, seed=SEED) for p in range(w.personas)
    ]
    schedule = interleaved_schedule(
        w.personas, w.conversations, w.turns, w.knowledge_tokens, count, SEED
    )
    ttfts: dict[str, list[float]] = {}
    for name, engine in engines.items():
        say(f"   {name}: {limits.get(name, len(schedule))} messages")
        history: dict[int, list[tuple[str, str]]] = {}
        ttfts[name] = []
        for turn in schedule[: limits.get(name, len(schedule))]:
            past = history.setdefault(turn.conversation, [])
            request = GenerationRequest(
                messages=turn_messages(instructions[turn.persona], past, turn),
                max_tokens=w.reply_tokens,
                temperature=0.0,
                timeout_s=REMOTE_TIMEOUT_S,
            )
            text, sample = await timed(engine, request)
            past.append((turn.question, text))
            ttfts[name].append(sample.ttft_ms)
    n = len(schedule)
    rows = []
    for metric, q, target in (("p50 ms", 0.5, ">= 5x naive"), ("p95 ms", 0.95, "")):
        values = {name: percentile(t, q) for name, t in ttfts.items()}
        label = f"follow-up TTFT ({w.personas} personas, {n} messages)"
        rows.append(Row(label, metric, "lower", values.pop(OURS), values, target))
    return rows


# -- 3. concurrency --------------------------------------------------------------------------


async def bench_concurrency(
    engine: Engine, streams: int, count: Callable[[str], int], w: Workload, tag: str
) -> tuple[float, float]:
    """`streams` distinct prompts at once: aggregate generation tok/s and median TTFT ms."""
    requests = [
        GenerationRequest(
            messages=(
                ChatMessage(
                    "system",
                    f"{tag} stream {i}. "
                    + _filler(count, w.concurrency_prompt_tokens, f"{tag}{streams}-{i}"),
                ),
                ChatMessage("user", "Tell me a long story about the Acme office."),
            ),
            max_tokens=w.concurrency_reply_tokens,
            temperature=0.0,
            repeat_penalty=1.0,
            timeout_s=REMOTE_TIMEOUT_S,
        )
        for i in range(streams)
    ]
    started_at = time.perf_counter()
    results = await asyncio.gather(*(timed(engine, r) for r in requests))
    wall = time.perf_counter() - started_at
    tokens = sum(s.completion_tokens for _, s in results)
    return tokens / wall, statistics.median(s.ttft_ms for _, s in results)


async def concurrency_rows(
    ours: Engine,
    server: Path | None,
    setup: Setup,
    streams: int,
    count: Callable[[str], int],
    w: Workload,
) -> list[Row]:
    """`streams` at once, ours and llama-server --parallel `streams` taking turns; medians."""
    rates: dict[str, list[float]] = {OURS: []}
    ttfts: dict[str, list[float]] = {OURS: []}
    async with contextlib.AsyncExitStack() as stack:
        engines: dict[str, Engine] = {OURS: ours}
        if server is not None:
            args = ["-c", str(SERVER_SLOT_CTX * streams), "-np", str(streams)]
            url = stack.enter_context(llama_server(server, setup, args))
            engines[SERVER] = await remote(url, streams)
            stack.push_async_callback(engines[SERVER].close)
            rates[SERVER], ttfts[SERVER] = [], []
        for rep in range(w.concurrency_repeats):
            # Every engine gets the same new prompts (so the same greedy replies), uncached.
            for name, engine in engines.items():
                rate, ttft = await bench_concurrency(engine, streams, count, w, f"conc{rep}")
                rates[name].append(rate)
                ttfts[name].append(ttft)
    median_rate = {name: statistics.median(v) for name, v in rates.items()}
    median_ttft = {name: statistics.median(v) for name, v in ttfts.items()}
    target = ">= 1.0x llama-server --parallel 4" if streams == 4 else ""
    label = f"{streams} concurrent streams"
    return [
        Row(label, "aggregate tok/s", "higher", median_rate.pop(OURS), median_rate, target),
        Row(label, "TTFT p50 ms", "lower", median_ttft.pop(OURS), median_ttft),
    ]


# -- 4. memory -------------------------------------------------------------------------------


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _memory_child(setup: Setup, personas: int, persona_tokens: int, conn: object) -> None:
    async def run() -> tuple[float, float, str]:
        engine = ours_engine(setup, parallel=DEFAULT_PARALLEL)
        async with started(engine):
            rss: list[float] = []
            for p in range(personas):
                system = persona_instructions(p, persona_tokens, engine.count_tokens, seed=SEED)
                request = GenerationRequest(
                    messages=(ChatMessage("system", system), ChatMessage("user", "Hello!")),
                    max_tokens=4,
                    temperature=0.0,
                    timeout_s=REMOTE_TIMEOUT_S,
                )
                await timed(engine, request)
                if p == 0:
                    rss.append(_rss_mb())
            rss.append(_rss_mb())
            return rss[0], rss[-1], engine.status().detail

    conn.send(asyncio.run(run()))  # type: ignore[attr-defined]


def bench_memory(setup: Setup, w: Workload) -> Row:
    """Resident memory of a fresh engine process after 1 and after many personas."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=_memory_child,
        args=(setup, w.memory_personas, w.persona_tokens, child),
    )
    proc.start()
    one, many, detail = parent.recv()
    proc.join()
    return Row(
        "memory (RSS of the engine process)",
        f"MB with {w.memory_personas} personas - MB with 1 ({one:.0f} -> {many:.0f}; {detail})",
        "lower",
        many - one,
        {},
        "< 100 MB",
    )


# -- the whole run ---------------------------------------------------------------------------


async def run_engine_bench(
    model_path: Path | None = None,
    *,
    n_threads: int | None = None,
    flash_attn: str = "auto",
    n_gpu_layers: int = 0,
    workload: Workload = Workload(),
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
            say("1/4 single stream")
            keep(await bench_single(engines, count, workload))
            if SERVER in engines:
                await engines.pop(SERVER).close()
        with contextlib.ExitStack() as stack:
            engines = {OURS: ours, NAIVE: naive}
            if server is not None:
                slots = TTFT_SERVER_SLOTS
                args = [
                    "-c", str(SERVER_SLOT_CTX * slots), "-np", str(slots),
                    "--cache-reuse", str(SERVER_CACHE_REUSE),
                ]  # fmt: skip
                url = stack.enter_context(llama_server(server, setup, args))
                engines[SERVER] = await remote(url, slots)
            say("2/4 follow-up TTFT (the longest part)")
            keep(
                await bench_followups(
                    engines, count, workload, {NAIVE: workload.naive_messages}, say
                )
            )
            if SERVER in engines:
                await engines.pop(SERVER).close()
        say("3/4 concurrency")
        for n in workload.concurrency:
            keep(await concurrency_rows(ours, server, setup, n, count, workload))
    say("4/4 memory")
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


def format_report(report: Report) -> str:
    """One Markdown table; ratios say how many times better bots is (>1 = better)."""
    lines = [
        f"bots bench engine: {report.machine}",
        f"model: {report.model}",
        *(f"note: {n}" for n in report.notes),
        "",
        "| workload | metric | bots | llama-server | vs llama-server | naive | vs naive | target |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]

    def fig(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    def times(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    for row in report.rows:
        lines.append(
            f"| {row.workload} | {row.metric} | {fig(row.ours)} | "
            f"{fig(row.baselines.get(SERVER))} | {times(row.ratio(SERVER))} | "
            f"{fig(row.baselines.get(NAIVE))} | {times(row.ratio(NAIVE))} | {row.target} |"
        )
    return "\n".join(lines)


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
    workload = QUICK if ns.quick else Workload()
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
