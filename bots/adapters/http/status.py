"""The body of `GET /status` (what `bots status` prints): personas, indexes, engine, model,
adapters, and the database with the instances sharing it."""

from __future__ import annotations

import time
from typing import Any

from bots.runtime import Runtime


async def status_report(app: Runtime) -> dict[str, Any]:
    """What `GET /status` answers: `status_body`, with this instance, its database and every
    live instance."""
    store = await app.store.health()
    body = status_body(app)
    body["instance"] = app.store.instance_id
    body["database"] = {
        "ok": store.ok,
        "backend": store.backend,
        "detail": store.detail,
        "leases": app.store.leases,
    }
    limits = app.store.rest_limits
    if limits is not None:
        # REST rate limits shared with the other instances on one bot token (Discord).
        body["database"]["rest_limits"] = {"blocks": limits.blocks, "waits": limits.waits}
    # Every live instance with its persona hashes and connections: instances that disagree
    # (a folder not yet synced) show here.
    body["instances"] = list(store.instances)
    return body


def status_body(app: Runtime) -> dict[str, Any]:
    """Personas (load time, hash, last reload, errors, index sizes), engine queue, adapters."""
    indexes = app.knowledge.stats()
    personas = []
    for state in app.registry.states():
        persona = state.persona
        personas.append(
            {
                "id": state.id,
                "name": persona.display_name if persona else state.id,
                "loaded": persona is not None,
                "loaded_at": persona.loaded_at if persona else None,
                "content_hash": persona.content_hash if persona else None,
                "last_reload": state.last_reload,
                "reloads": state.reloads,
                "errors": [e.as_dict() for e in state.errors],
                "knowledge": list(persona.knowledge) if persona else [],
                "index": _persona_index(indexes, state.id, persona.knowledge if persona else ()),
            }
        )
    engine = app.engine.status()
    return {
        "uptime_s": round(time.time() - app.started_at, 1) if app.started_at else 0,
        "personas": personas,
        "indexes": {name: _stats_dict(s) for name, s in indexes.items()},
        "engine": {
            "model": engine.model,
            "healthy": engine.healthy,
            "queue_depth": engine.queue_depth,
            "queue_capacity": engine.queue_capacity,
            "active": engine.active,
            "detail": engine.detail,
        },
        # Which model serves and the last switch that failed (the old model serving on).
        "model": app.engine.state().as_dict(),
        "adapters": dict(app.adapters),
    }


def _persona_index(
    indexes: dict[str, Any], persona_id: str, libraries: tuple[str, ...]
) -> dict[str, int]:
    """Documents and chunks a persona retrieves from: its folder plus its libraries."""
    names = [f"personas/{persona_id}", *(f"knowledge/{name}" for name in libraries)]
    found = [indexes[n] for n in names if n in indexes]
    return {"documents": sum(s.documents for s in found), "chunks": sum(s.chunks for s in found)}


def _stats_dict(stats: Any) -> dict[str, Any]:
    return {"documents": stats.documents, "chunks": stats.chunks, "skipped": list(stats.skipped)}
