"""The engines `bots bench engine` compares, each launched on the same `Setup`: ours (the batched
engine), llama.cpp's `llama-server` behind a `RemoteEngine`, and the naive `SimpleEngine`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bots.bench.llama_server import running_llama_server
from bots.engine.base import Engine
from bots.engine.batched import DEFAULT_KV_CELLS, DEFAULT_QUEUE_SIZE, BatchedEngine, Speculation
from bots.engine.llama_native import amx_kernels_built
from bots.engine.process.supervisor import SupervisedEngine
from bots.engine.remote import RemoteEngine
from bots.settings import ModelSettings, Settings

ENGINE_N_CTX = 8192
SERVER_SLOT_CTX = 4096
# llama-server's KV reuse across requests by shifting cached chunks of at least this many tokens.
SERVER_CACHE_REUSE = 256
TTFT_SERVER_SLOTS = 4
REMOTE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Setup:
    """What every engine in the run shares: the model file, CPU threads, flash attention and
    GPU layers (`n_gpu_layers`, llama-server's `-ngl`)."""

    model: Path
    threads: int
    flash_attn: str = "auto"
    n_gpu_layers: int = 0


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


def ours_engine(
    setup: Setup,
    *,
    parallel: int,
    kv_cells: int = DEFAULT_KV_CELLS,
    speculation: Speculation | None = None,
    adapt_threads: bool = True,
) -> BatchedEngine:
    """The batched engine on `setup`, queueing at least as many requests as it runs at once
    (speculation and thread adaptation as `bots serve` has them by default, unless told)."""
    return BatchedEngine(
        setup.model,
        n_ctx=ENGINE_N_CTX,
        n_threads=setup.threads,
        n_gpu_layers=setup.n_gpu_layers,
        flash_attn=setup.flash_attn,
        parallel=parallel,
        queue_size=max(DEFAULT_QUEUE_SIZE, parallel),
        kv_cells=kv_cells,
        speculation=speculation,
        adapt_threads=adapt_threads,
    )


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
