"""Re-run personas' evals whenever their files change, and report what flipped.

The registry calls its listeners, and the app its file listeners, on the watcher thread; both
only schedule work on the event loop. Each persona has at most one run in progress: a change
during a run marks the persona dirty and one more run follows, however many saves came in
meanwhile. Runs of different personas wait for each other too, so the engine sees one eval
case at a time (and a busy bot keeps its slots for people).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bots.evals.model import Flip, PersonaRun, flips
from bots.evals.runner import RunPlan, execute, plan_run
from bots.persona.registry import ReloadEvent
from bots.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalEvent:
    """A run began ("started") or ended ("finished", with its results and flips)."""

    persona_id: str
    kind: Literal["started", "finished"]
    run: PersonaRun | None = None
    flips: tuple[Flip, ...] = ()


EvalListener = Callable[[EvalEvent], None]


class EvalMonitor:
    """Keeps the last eval run of each persona and runs again when the persona's files change."""

    def __init__(
        self,
        app: Runtime,
        *,
        retrieval_only: bool = False,
        personas: Collection[str] | None = None,
        skip_unchanged: bool = True,
    ) -> None:
        self.app = app
        self.retrieval_only = retrieval_only
        self.personas = frozenset(personas) if personas is not None else None
        self.skip_unchanged = skip_unchanged
        self._listeners: list[EvalListener] = []
        self._last: dict[str, PersonaRun] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._forced: set[str] = set()
        self._one_at_a_time = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def add_listener(self, listener: EvalListener) -> None:
        """Call `listener` on the event loop when a run starts and when it finishes."""
        self._listeners.append(listener)

    def remove_listener(self, listener: EvalListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def start(self) -> None:
        """Begin listening for reloads and file changes (call on the event loop)."""
        self._loop = asyncio.get_running_loop()
        self.app.registry.add_listener(self._on_reload)
        self.app.add_file_listener(self._on_files)

    async def close(self) -> None:
        """Stop listening and cancel runs in progress."""
        self._closed = True
        self.app.registry.remove_listener(self._on_reload)
        self.app.remove_file_listener(self._on_files)
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def last(self, persona_id: str) -> PersonaRun | None:
        """The latest finished run of the persona, if any."""
        return self._last.get(persona_id)

    def running(self, persona_id: str) -> bool:
        task = self._tasks.get(persona_id)
        return task is not None and not task.done()

    def request(self, persona_id: str, *, force: bool = False) -> None:
        """Run the persona's evals soon (on the event loop thread); coalesces with a run going on.

        Without `force`, a run whose inputs equal the previous run's is skipped.
        """
        if self._closed or (self.personas is not None and persona_id not in self.personas):
            return
        if force or not self.skip_unchanged:
            self._forced.add(persona_id)
        if self.running(persona_id):
            self._dirty.add(persona_id)
            return
        self._tasks[persona_id] = asyncio.get_running_loop().create_task(self._runs(persona_id))

    async def wait_idle(self) -> None:
        """Return when no run is in progress or pending (for tests and one-shot callers)."""
        while tasks := [t for t in self._tasks.values() if not t.done()]:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _runs(self, persona_id: str) -> None:
        while True:
            self._dirty.discard(persona_id)
            force = persona_id in self._forced
            self._forced.discard(persona_id)
            try:
                await self._run_once(persona_id, force)
            except asyncio.CancelledError:
                raise
            except Exception:  # one failed run must not stop the next saves from running
                log.exception("eval run of %s failed", persona_id)
            if persona_id not in self._dirty or self._closed:
                return

    async def _run_once(self, persona_id: str, force: bool) -> None:
        async with self._one_at_a_time:
            previous = self._last.get(persona_id)
            plan = await plan_run(self.app, persona_id, retrieval_only=self.retrieval_only)
            if not force and previous is not None and _same_inputs(previous, plan):
                return  # same persona, cases and documents as last time: the same results
            self._emit(EvalEvent(persona_id, "started"))
            run = await execute(self.app, plan)
            self._last[persona_id] = run
            self._emit(EvalEvent(persona_id, "finished", run, tuple(flips(previous, run))))

    def _emit(self, event: EvalEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken listener must not stop the runs
                log.exception("eval listener failed")

    def _schedule(self, persona_ids: Collection[str]) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        for persona_id in persona_ids:
            try:
                loop.call_soon_threadsafe(self.request, persona_id)
            except RuntimeError:  # the loop closed while the watcher thread was reporting
                return

    def _on_reload(self, event: ReloadEvent) -> None:
        if event.outcome != "removed":
            self._schedule([event.persona_id])

    def _on_files(self, paths: set[Path]) -> None:
        self._schedule(self.personas_touched(paths))

    def personas_touched(self, paths: Collection[Path]) -> set[str]:
        """Personas whose folder, or one of whose libraries, holds one of `paths`."""
        settings = self.app.settings
        touched: set[str] = set()
        libraries: set[str] = set()
        for path in paths:
            for root, names in (
                (settings.personas_dir, touched),
                (settings.knowledge_dir, libraries),
            ):
                parts = _parts_under(path, root)
                if parts:
                    names.add(parts[0])
        for persona in self.app.registry.personas():
            if libraries & set(persona.knowledge):
                touched.add(persona.id)
        return touched


def _parts_under(path: Path, root: Path) -> tuple[str, ...]:
    absolute = path.absolute()
    for base in (root.absolute(), root.resolve()):
        if absolute.is_relative_to(base):
            return absolute.relative_to(base).parts
    return ()


def _same_inputs(previous: PersonaRun, plan: RunPlan) -> bool:
    return (
        bool(plan.fingerprint)
        and previous.fingerprint == plan.fingerprint
        and previous.errors == plan.errors
    )
