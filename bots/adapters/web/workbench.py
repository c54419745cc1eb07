"""The workbench's state in one server: open pages (their event hub), eval runs, the last flips.

The registry and the runtime report reloads and file changes on the watcher thread; the
workbench hops them onto the event loop and publishes them to every open page.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection
from pathlib import Path

from aiohttp import web

import bots.adapters.web.evals_view as evals_view
import bots.adapters.web.views as views
from bots.adapters.web.comparison_view import adapter, comparison
from bots.adapters.web.events import EventHub, ServerEvent, json_event
from bots.engine.switch import ModelState
from bots.evals.compare import last_comparison
from bots.evals.model import Flip
from bots.evals.watch import EvalEvent, EvalMonitor
from bots.persona.registry import ReloadEvent
from bots.runtime import Runtime


class Workbench:
    """The workbench's state in one server: open pages, eval runs, the last flips."""

    def __init__(self, app: Runtime) -> None:
        self.app = app
        self.hub = EventHub()
        self.monitor = EvalMonitor(app)
        self.flips: dict[str, tuple[Flip, ...]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def root(self) -> Path:
        return self.app.settings.root

    async def start(self, _: web.Application) -> None:
        self._loop = asyncio.get_running_loop()
        self.monitor.add_listener(self._on_eval)
        self.monitor.start()
        self.app.registry.add_listener(self._on_reload)
        self.app.add_file_listener(self._on_files)
        self.app.engine.add_listener(self._on_model)

    async def shutdown(self, _: web.Application) -> None:
        """End the event streams first, so the server does not wait for open pages."""
        self.app.registry.remove_listener(self._on_reload)
        self.app.remove_file_listener(self._on_files)
        self.app.engine.remove_listener(self._on_model)
        self.hub.close()
        await self.monitor.close()

    def eval_view(self, persona_id: str) -> views.EvalView:
        return views.EvalView(
            self.monitor.last(persona_id),
            self.monitor.running(persona_id),
            self.flips.get(persona_id, ()),
        )

    def personas_html(self, selected: str = "") -> str:
        states = self.app.registry.states()
        evals = {s.id: self.eval_view(s.id) for s in states}
        model = views.model_block(self.app.engine.state(), self.app.engine.status().model)
        return model + views.personas_list(states, selected, evals, self.root)

    def personas_event(self) -> ServerEvent:
        return ServerEvent("personas", self.personas_html())

    def evals_event(self, persona_id: str) -> ServerEvent:
        html = evals_view.evals(self.eval_view(persona_id), self.root) + self._compared(persona_id)
        return json_event("evals", persona=persona_id, html=html)

    def evals_html(self, persona_id: str) -> str:
        """The evals fragment; the first time a persona is looked at, its evals start running."""
        if self.monitor.last(persona_id) is None and not self.monitor.running(persona_id):
            self.monitor.request(persona_id)
        return evals_view.evals(self.eval_view(persona_id), self.root) + self._compared(persona_id)

    def _compared(self, persona_id: str) -> str:
        """The persona's adapter and the last comparison (of models or adapters) it was in."""
        served = adapter(self.app.registry.get(persona_id))
        return served + comparison(last_comparison(self.app.settings), persona_id)

    # Listeners. The registry and the app call theirs on the watcher thread: hop to the loop.

    def _call_soon(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None:
            return
        # RuntimeError: the loop closed while the watcher was reporting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback)

    def _on_reload(self, event: ReloadEvent) -> None:
        self._call_soon(lambda: self.hub.publish(self.personas_event()))

    def _on_model(self, state: ModelState) -> None:
        # Called on the loop. Results of the old model no longer say anything: run again.
        self.hub.publish(self.personas_event())
        if not state.error:
            for persona in self.app.registry.personas():
                if self.monitor.last(persona.id) is not None:
                    self.monitor.request(persona.id)

    def _on_files(self, paths: set[Path]) -> None:
        touched = self.monitor.personas_touched(paths)
        self._call_soon(lambda: self._publish_changed(touched))

    def _publish_changed(self, persona_ids: Collection[str]) -> None:
        for persona_id in sorted(persona_ids):
            self.hub.publish(json_event("persona", persona=persona_id))

    def _on_eval(self, event: EvalEvent) -> None:
        if event.kind == "finished":
            self.flips[event.persona_id] = event.flips
        self.hub.publish(self.evals_event(event.persona_id))
        self.hub.publish(self.personas_event())


WORKBENCH_KEY = web.AppKey("bots_workbench", Workbench)
