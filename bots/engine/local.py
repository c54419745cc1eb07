"""The engines that run the model in this process: the batched one or the simple one.

`factory.make_engine` builds them when isolation is off, and the model worker process
(`bots.engine.process.worker`) builds them on its side of the pipe; neither can build a
supervisor, so a worker never starts a worker of its own.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from bots.engine.base import Engine
from bots.settings import Settings

log = logging.getLogger(__name__)

LOCAL_ENGINES = ("batched", "simple")


def make_local_engine(settings: Settings, path: Path) -> Engine:
    """The local engine `model.engine` names, on the GGUF file at `path`; not started yet."""
    model = settings.model
    threads = model.n_threads or os.cpu_count() or 1
    if model.engine == "simple":
        from bots.engine.simple import SimpleEngine

        return SimpleEngine(
            served_model_path(settings, path, threads),
            n_ctx=model.n_ctx,
            n_threads=threads,
            n_gpu_layers=model.n_gpu_layers,
            queue_size=model.queue_size,
        )
    if model.engine != "batched":
        raise ValueError(
            f"model.engine = {model.engine!r}: must be one of {', '.join(LOCAL_ENGINES)}"
        )
    from bots.engine.batched import BatchedEngine, Speculation

    return BatchedEngine(
        served_model_path(settings, path, threads),
        n_ctx=model.n_ctx,
        n_threads=threads,
        n_gpu_layers=model.n_gpu_layers,
        parallel=model.parallel,
        queue_size=model.queue_size,
        park_bytes=model.park_mb * 2**20,
        flash_attn=model.flash_attn,
        adapt_threads=model.adapt_threads,
        speculation=Speculation(
            "off" if model.speculation == "off" else "ngram",
            model.draft_max,
            model.draft_max_streams,
        ),
    )


def served_model_path(settings: Settings, path: Path, threads: int) -> Path:
    """The file the local engine loads: a cached Q8_0 copy on a CPU when `model.quantize_q8`.

    Small Q4 models have no fast CPU matrix kernels; the Q8_0 copy evaluates prompts about twice
    as fast at the same perplexity. On a GPU the original file is served as it is.
    """
    model = settings.model
    if not model.quantize_q8 or model.n_gpu_layers != 0:
        return path
    from bots.engine.quantize import QuantizeError, prepared_model_path

    default_dir = settings.data_dir / "models"
    cache_dir = Path(model.cache_dir).expanduser() if model.cache_dir else default_dir
    try:
        return prepared_model_path(path, cache_dir, n_threads=threads)
    except (QuantizeError, OSError) as exc:
        log.warning("model.quantize_q8: serving %s as it is: %s", path.name, exc)
        return path
