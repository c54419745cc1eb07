"""Choose the engine from settings: a remote endpoint, the batched or the simple local one."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from bots.engine.base import Engine
from bots.engine.model_files import resolve_model_path
from bots.settings import Settings

log = logging.getLogger(__name__)

ENGINES = ("batched", "simple")


def make_engine(settings: Settings) -> Engine:
    """The engine named by `model.engine` (or `model.endpoint` when set); not started yet."""
    model = settings.model
    threads = model.n_threads or os.cpu_count() or 1
    if model.endpoint:
        from bots.engine.remote import RemoteEngine

        return RemoteEngine(
            model.endpoint,
            model=model.endpoint_model,
            api_key=model.endpoint_api_key or None,
            timeout_s=model.timeout_s,
            retries=model.retries,
            queue_size=model.queue_size,
        )
    path = resolve_model_path(model.path or None)
    if model.isolate and model.engine in ENGINES:
        # The worker process builds this same engine with isolation off.
        from bots.engine.supervised import SupervisedEngine

        return SupervisedEngine(settings, path)
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
        raise ValueError(f"model.engine = {model.engine!r}: must be one of {', '.join(ENGINES)}")
    from bots.engine.batched import BatchedEngine

    return BatchedEngine(
        served_model_path(settings, path, threads),
        n_ctx=model.n_ctx,
        n_threads=threads,
        n_gpu_layers=model.n_gpu_layers,
        parallel=model.parallel,
        queue_size=model.queue_size,
        park_bytes=model.park_mb * 2**20,
        flash_attn=model.flash_attn,
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
