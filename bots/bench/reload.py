"""Write-to-live reload latency: how long after a save the next reply sees the new persona."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bots.runtime import Runtime
from bots.settings import load_settings

EDITS = 50
POLL_S = 0.002
TIMEOUT_S = 10.0
PERSONA = "---\nname: Bench\ndescription: reload benchmark\n---\nYou are version {n}.\n"


async def measure_reload(edits: int = EDITS) -> dict[str, float]:
    """Save persona.md `edits` times through the real watcher; p50/p95/max ms until live."""
    with tempfile.TemporaryDirectory(prefix="bots-reload-") as tmp:
        root = Path(tmp)
        folder = root / "personas" / "bench"
        folder.mkdir(parents=True)
        (root / "knowledge").mkdir()
        path = folder / "persona.md"
        path.write_text(PERSONA.format(n=0))
        app = Runtime.create(load_settings(root, environ={}))
        await app.start(load_model=False)
        latencies = []
        try:
            for n in range(1, edits + 1):
                await asyncio.sleep(0.05)
                started = time.perf_counter()
                path.write_text(PERSONA.format(n=n))
                expected = f"You are version {n}."
                while True:
                    persona = app.registry.get("bench")
                    if persona is not None and persona.instructions == expected:
                        break
                    if time.perf_counter() - started > TIMEOUT_S:
                        raise TimeoutError(f"edit {n} not live after {TIMEOUT_S}s")
                    await asyncio.sleep(POLL_S)
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            await app.close()
    latencies.sort()
    return {
        "edits": float(edits),
        "p50_ms": statistics.median(latencies),
        "p95_ms": latencies[int(len(latencies) * 0.95) - 1],
        "max_ms": latencies[-1],
    }
