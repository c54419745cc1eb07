"""Choose the engine from settings: a remote endpoint, the batched or the simple local one."""

from __future__ import annotations

import os

from bots.engine.base import Engine
from bots.engine.model_files import resolve_model_path
from bots.settings import Settings

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
            path,
            n_ctx=model.n_ctx,
            n_threads=threads,
            n_gpu_layers=model.n_gpu_layers,
            queue_size=model.queue_size,
        )
    if model.engine != "batched":
        raise ValueError(f"model.engine = {model.engine!r}: must be one of {', '.join(ENGINES)}")
    from bots.engine.batched import BatchedEngine

    return BatchedEngine(
        path,
        n_ctx=model.n_ctx,
        n_threads=threads,
        n_gpu_layers=model.n_gpu_layers,
        parallel=model.parallel,
        queue_size=model.queue_size,
    )
