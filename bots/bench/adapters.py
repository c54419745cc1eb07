"""`bots bench adapters`: what a LoRA adapter costs the batched engine, ratios in one run.

1. Single stream: the same uncached prompts and greedy replies without and with an adapter,
   alternating; prompt and generation tokens/s and their ratio.
2. Mixed: several personas at once, half of them with adapters (one each), on the batched
   engine (one adapter set per decode step) and on llama-server started with the same adapters
   and told each request's set (it never batches different sets either); aggregate generation
   tokens/s, and ours with no adapter at all for reference.

The adapters are random (`lora_file.py`, rank 8 on all seven projections by default, as a PEFT
recipe trains them): the cost of an adapter depends on its shape, not its values.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bots.bench.contenders import (
    REMOTE_TIMEOUT_S,
    Setup,
    llama_server,
    ours_engine,
    remote,
    started,
)
from bots.bench.engine import MODEL_CACHE_DIR
from bots.bench.engine_report import load_average, machine_description
from bots.bench.engine_workloads import Sample, timed
from bots.bench.llama_server import installed_binary
from bots.bench.lora_file import write_random_lora
from bots.bench.workload import persona_instructions
from bots.engine.base import Adapter, ChatMessage, Engine, GenerationRequest
from bots.engine.model_files import default_model_path
from bots.engine.quantize import prepared_model_path

PROMPT_TOKENS = 300
REPLY_TOKENS = 64
REPEATS = 3
MIXED_PERSONAS = 4
SEED = 1234


@dataclass(frozen=True)
class Figure:
    """One measured figure: without and with adapters (or ours and llama-server)."""

    workload: str
    metric: str
    first: str
    first_value: float
    second: str
    second_value: float

    @property
    def ratio(self) -> float:
        return self.second_value / self.first_value if self.first_value > 0 else 0.0


def _request(system: str, adapter: Adapter | None) -> GenerationRequest:
    messages = (
        ChatMessage("system", system),
        ChatMessage("user", "Write a long, detailed story about the Acme office."),
    )
    return GenerationRequest(
        messages,
        max_tokens=REPLY_TOKENS,
        temperature=0.0,
        repeat_penalty=1.0,
        timeout_s=REMOTE_TIMEOUT_S,
        reuse_cache=False,
        adapter=adapter,
    )


def _rates(samples: Sequence[Sample]) -> tuple[float, float]:
    """Median prompt and generation tokens/s."""
    prompt = statistics.median(s.prompt_tokens / (s.ttft_ms / 1000) for s in samples)
    gen = statistics.median(
        (s.completion_tokens - 1) / ((s.total_ms - s.ttft_ms) / 1000) for s in samples
    )
    return prompt, gen


async def single_stream(
    engine: Engine, adapter: Adapter, count: Callable[[str], int]
) -> list[Figure]:
    """Uncached prompts, alternately without and with `adapter`."""
    without: list[Sample] = []
    with_adapter: list[Sample] = []
    for rep in range(REPEATS):
        for chosen, samples in ((None, without), (adapter, with_adapter)):
            system = f"Run {rep}. " + persona_instructions(rep, PROMPT_TOKENS, count, seed=SEED)
            samples.append((await timed(engine, _request(system, chosen)))[1])
    (p0, g0), (p1, g1) = _rates(without), _rates(with_adapter)
    return [
        Figure("single stream", "prompt tok/s", "no adapter", p0, "adapter", p1),
        Figure("single stream", "generation tok/s", "no adapter", g0, "adapter", g1),
    ]


async def mixed(
    engine: Engine, adapters: Sequence[Adapter | None], count: Callable[[str], int]
) -> float:
    """Aggregate generation tokens/s of one stream per persona (`adapters`: each one's), all at
    once."""
    requests = [
        _request(persona_instructions(100 + i, PROMPT_TOKENS, count, seed=SEED), adapter)
        for i, adapter in enumerate(adapters)
    ]
    started_at = time.perf_counter()
    samples = await asyncio.gather(*(timed(engine, r) for r in requests))
    wall = time.perf_counter() - started_at
    return sum(s.completion_tokens for _, s in samples) / wall


async def run_adapter_bench(model: Path, threads: int, server: Path | None) -> list[Figure]:
    """Both workloads; the llama-server figure only with `server` (its binary). Each figure
    goes to stderr as soon as it is measured."""
    setup = Setup(model, threads)
    figures = _Figures()
    with tempfile.TemporaryDirectory(prefix="bots-lora-") as folder:
        files = [write_random_lora(Path(folder) / f"a{i}.gguf", model, seed=i) for i in range(2)]
        loras = [Adapter(f"bench@{i}", str(path)) for i, path in enumerate(files)]
        half: list[Adapter | None] = [
            loras[i // 2] if i % 2 else None for i in range(MIXED_PERSONAS)
        ]
        ours = ours_engine(setup, parallel=MIXED_PERSONAS)
        async with started(ours):  # idle while llama-server runs: its tokenizer counts for both
            count = ours.count_tokens
            figures.extend(await single_stream(ours, loras[0], count))
            plain = await mixed(ours, [None] * MIXED_PERSONAS, count)
            ours_mixed = await mixed(ours, half, count)
            figures.append(
                Figure(
                    "mixed",
                    "generation tok/s",
                    "bots, no adapters",
                    plain,
                    "bots, half with adapters",
                    ours_mixed,
                )
            )
            if server is not None:
                theirs = await _server_mixed(server, setup, files, half, count)
                figures.append(
                    Figure(
                        "mixed, half with adapters",
                        "generation tok/s",
                        "llama-server",
                        theirs,
                        "bots",
                        ours_mixed,
                    )
                )
    return figures


async def _server_mixed(
    server: Path,
    setup: Setup,
    files: Sequence[Path],
    adapters: Sequence[Adapter | None],
    count: Callable[[str], int],
) -> float:
    """The mixed workload on llama-server started with `files` (one slot per persona)."""
    args = ["-c", str(4096 * MIXED_PERSONAS), "-np", str(MIXED_PERSONAS)]
    for path in files:
        args += ["--lora", str(path)]
    with llama_server(server, setup, args) as url:
        engine = await remote(url, MIXED_PERSONAS)
        try:
            await mixed(engine, [None] * MIXED_PERSONAS, count)  # warm-up
            return await mixed(engine, adapters, count)
        finally:
            await engine.close()


class _Figures(list[Figure]):
    """The figures measured so far, each told on stderr when it is added."""

    def append(self, figure: Figure) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {format_figures([figure])}", file=sys.stderr)
        super().append(figure)

    def extend(self, figures: Iterable[Figure]) -> None:
        for figure in figures:
            self.append(figure)


def format_figures(figures: Sequence[Figure]) -> str:
    """A Markdown table, B / A the ratio of each row."""
    lines = [
        "| workload | metric | A | A value | B | B value | B / A |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    for f in figures:
        lines.append(
            f"| {f.workload} | {f.metric} | {f.first} | {f.first_value:,.1f} | {f.second} | "
            f"{f.second_value:,.1f} | {f.ratio:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bots.bench.adapters [--model PATH] [--threads N] [--server PATH]`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--server", type=Path, default=None, help="llama-server binary")
    parser.add_argument("--no-server", action="store_true", help="leave llama-server out")
    ns = parser.parse_args(argv)
    threads = ns.threads or os.cpu_count() or 1
    model = ns.model or prepared_model_path(
        default_model_path(), MODEL_CACHE_DIR, n_threads=threads
    )
    server = None if ns.no_server else (ns.server or installed_binary())
    print(f"bots bench adapters: {machine_description()}; load {load_average()}", file=sys.stderr)
    figures = asyncio.run(run_adapter_bench(model, threads, server))
    print(f"model: {model.name}, {threads} threads; adapters: random rank 8, all projections")
    print(format_figures(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
