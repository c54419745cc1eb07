"""The served model, switchable while serving: the one Engine the chat side holds.

A switch loads the new engine beside the old one; only once it has loaded does it take new
requests. Replies already streaming keep the engine they began on, and the old engine (with
every prefix it cached) is closed when its last one ends. A model that fails to load changes
nothing but the error shown, as a broken persona save keeps the last good persona serving.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bots.engine.base import Engine, EngineStatus, GenerationRequest, Piece

log = logging.getLogger(__name__)

# How long a replaced engine waits for its last replies before it is closed regardless.
DRAIN_LIMIT_S = 300.0
RETIRE_POLL_S = 0.05


@runtime_checkable
class Supervised(Protocol):
    """An engine that can fail for good (the supervised worker gave up)."""

    async def wait_failed(self) -> str: ...


@dataclass(frozen=True)
class ModelState:
    """Which model serves, since when, and the last switch that failed (until one succeeds)."""

    name: str
    source: str
    since: float
    switches: int = 0
    error: str = ""
    error_source: str = ""
    error_at: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "source": self.source,
            "since": self.since,
            "switches": self.switches,
            "error": self.error,
            "error_source": self.error_source,
            "error_at": self.error_at or None,
        }


class ModelSwitch:
    """An Engine that delegates to the current model's engine and can replace it live."""

    def __init__(self, engine: Engine, source: str = "") -> None:
        self._current = engine
        self._active: dict[int, int] = {}
        self._retired: set[asyncio.Task[None]] = set()
        self._retiring: set[Engine] = set()  # replaced, closed once their replies ended
        self._switched = asyncio.Event()
        self._lock = asyncio.Lock()
        self._state = ModelState(engine.status().model, source, time.time())
        self._requests: dict[str, int] = {}
        self._listeners: list[Callable[[ModelState], None]] = []

    @property
    def current(self) -> Engine:
        return self._current

    def state(self) -> ModelState:
        return self._state

    def add_listener(self, listener: Callable[[ModelState], None]) -> None:
        """Call `listener(state)` on the event loop after every switch, failed or not."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[ModelState], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _changed(self, state: ModelState) -> None:
        self._state = state
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception:  # a broken listener must not undo a switch
                log.exception("model switch listener failed")

    def requests(self) -> dict[str, int]:
        """Requests each model has been given since start, by model name."""
        return dict(self._requests)

    # -- the Engine protocol ----------------------------------------------------------------

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        engine, name = self._current, self._state.name
        key = id(engine)
        self._active[key] = self._active.get(key, 0) + 1
        self._requests[name] = self._requests.get(name, 0) + 1
        pieces = engine.stream(request)
        try:
            async for piece in pieces:
                yield piece
        finally:
            # Closed at once, not when collected: closing this stream cancels the generation.
            await pieces.aclose()  # type: ignore[attr-defined]
            if key in self._active:
                self._active[key] -= 1

    def count_tokens(self, text: str) -> int:
        return self._current.count_tokens(text)

    @property
    def context_size(self) -> int:
        return self._current.context_size

    def status(self) -> EngineStatus:
        return self._current.status()

    async def start(self) -> None:
        await self._current.start()
        self._state = ModelState(
            self._current.status().model, self._state.source, time.time(), self._state.switches
        )

    async def close(self) -> None:
        """Close the model serving and any replaced one still finishing its replies."""
        retiring = list(self._retiring)
        for task in list(self._retired):
            task.cancel()
        await asyncio.gather(*self._retired, return_exceptions=True)
        for engine in retiring:
            await _close_quietly(engine)
        await self._current.close()

    # -- switching --------------------------------------------------------------------------

    async def switch(self, engine: Engine, source: str) -> bool:
        """Load `engine` and serve it from the next request on; False (and the error in
        `state()`) when it does not load, the old model serving on."""
        async with self._lock:
            try:
                await engine.start()
            except Exception as exc:
                log.error("model switch to %s failed, the old model serves on: %s", source, exc)
                await _close_quietly(engine)
                self._changed(
                    dataclasses.replace(
                        self._state,
                        error=str(exc) or type(exc).__name__,
                        error_source=source,
                        error_at=time.time(),
                    )
                )
                return False
            old, self._current = self._current, engine
            self._changed(
                ModelState(engine.status().model, source, time.time(), self._state.switches + 1)
            )
            log.info("now serving %s (from %s)", self._state.name, source)
            task = asyncio.create_task(self._retire(old))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
            self._switched.set()
            self._switched = asyncio.Event()
            return True

    def fail(self, error: str, source: str) -> None:
        """Record a switch that failed before an engine existed (no such file, bad settings)."""
        log.error("model switch to %s failed, the old model serves on: %s", source, error)
        self._changed(
            dataclasses.replace(self._state, error=error, error_source=source, error_at=time.time())
        )

    def clear_error(self) -> None:
        """The settings name the serving model again: the last failed switch is moot."""
        if self._state.error:
            self._changed(dataclasses.replace(self._state, error="", error_source="", error_at=0.0))

    async def _retire(self, engine: Engine) -> None:
        """Close a replaced engine once the replies it was streaming have ended."""
        key = id(engine)
        self._retiring.add(engine)
        deadline = time.monotonic() + DRAIN_LIMIT_S
        while self._active.get(key, 0) > 0 and time.monotonic() < deadline:
            await asyncio.sleep(RETIRE_POLL_S)
        self._retiring.discard(engine)
        self._active.pop(key, None)
        await _close_quietly(engine)

    async def wait_failed(self) -> str:
        """Return the reason when the engine serving now fails for good (see Supervised)."""
        while True:
            engine, switched = self._current, self._switched
            waits: list[asyncio.Task[object]] = [asyncio.create_task(switched.wait())]
            if isinstance(engine, Supervised):
                waits.append(asyncio.create_task(engine.wait_failed()))
            try:
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
            for task in done:
                reason = task.result()
                if isinstance(reason, str) and engine is self._current:
                    return reason


async def _close_quietly(engine: Engine) -> None:
    try:
        await engine.close()
    except Exception:  # closing a model we no longer serve must not break the one we do
        log.exception("closing the replaced model failed")
