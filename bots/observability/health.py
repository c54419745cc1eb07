"""End-to-end health: can the engine produce a token right now?

"The process exists" is not health: a model worker can be restarting, hung or broken. The probe
asks the engine for one token with a tiny prompt. A success is remembered for a few seconds and
concurrent checks share one probe, so a busy health checker costs the model almost nothing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bots.engine.base import ChatMessage, Engine, EngineBusy, EngineError, GenerationRequest

PROBE_TIMEOUT_S = 10.0
# A success this recent answers the next check without a new probe.
SUCCESS_TTL_S = 10.0
PROBE_REQUEST = GenerationRequest(
    messages=(ChatMessage("system", "Answer with one word."), ChatMessage("user", "ping")),
    max_tokens=1,
    temperature=0.0,
    seed=0,
    timeout_s=PROBE_TIMEOUT_S,
)


@dataclass(frozen=True)
class Health:
    """The outcome of a health check."""

    ok: bool
    detail: str
    checked_at: float


class HealthProbe:
    """Checks an engine end to end (see the module docstring)."""

    def __init__(self, engine: Engine, *, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self._engine = engine
        self._timeout_s = timeout_s
        self._last: Health | None = None
        self._running: asyncio.Task[Health] | None = None

    async def check(self) -> Health:
        """Healthy when a one-token reply came back within the timeout (or a moment ago)."""
        status = self._engine.status()
        if not status.healthy:
            self._last = None
            return Health(False, status.detail or "the engine is not running", time.time())
        last = self._last
        if last is not None and last.ok and time.time() - last.checked_at < SUCCESS_TTL_S:
            return last
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._probe())
        self._last = await asyncio.shield(self._running)
        return self._last

    async def _probe(self) -> Health:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout_s):
                async for piece in self._engine.stream(PROBE_REQUEST):
                    if piece.finish_reason is not None:
                        break
        except EngineBusy:
            # The queue is full of real work: the engine is alive and answering.
            return Health(True, "busy", time.time())
        except TimeoutError:
            return Health(False, f"no token within {self._timeout_s:g}s", time.time())
        except EngineError as exc:
            return Health(False, str(exc), time.time())
        return Health(
            True, f"one token in {(time.perf_counter() - started) * 1000:.0f} ms", time.time()
        )
