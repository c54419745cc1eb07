"""Choose the engine from settings: a remote endpoint, the supervised worker or a local one."""

from __future__ import annotations

from bots.engine.base import Engine
from bots.engine.local import LOCAL_ENGINES, make_local_engine
from bots.engine.model_files import resolve_model_path
from bots.settings import Settings


def make_engine(settings: Settings) -> Engine:
    """The engine named by `model.engine` (or `model.endpoint` when set); not started yet."""
    model = settings.model
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
    if model.isolate and model.engine in LOCAL_ENGINES:
        # The worker process builds the same local engine with make_local_engine.
        from bots.engine.process.supervisor import SupervisedEngine

        return SupervisedEngine(settings, path)
    return make_local_engine(settings, path)
