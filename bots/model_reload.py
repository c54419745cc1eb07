"""Live model switches: a save of bots.toml that names another model is served from the next
reply on, as a persona save is.

The settings file's folder is watched (not recursively: the project's data folder next to it
writes constantly); each save reads the settings again as the process first read them (file,
environment, flags) and, when the model they name differs from the one serving, builds that
engine and hands it to the `ModelSwitch`. Settings that do not parse, a file that is not
there or does not load: the error is shown in `/status`, the old model serves on, and a later
save that fixes it clears the error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bots.engine.factory import make_engine
from bots.persona.watcher import Watcher
from bots.runtime import Runtime, model_source
from bots.settings import SETTINGS_FILE, ModelSettings, Settings, SettingsError

log = logging.getLogger(__name__)


def model_identity(model: ModelSettings) -> tuple[str, str, str]:
    """The settings that choose which model serves; a change in any of them is a switch."""
    return (model.path, model.endpoint, model.endpoint_model)


@dataclass(frozen=True)
class SettingsSource:
    """Where the settings came from: the file to follow and how to read them all again."""

    file: Path
    read: Callable[[], Settings]


class ModelReloader:
    """Follows the settings file and switches the served model when it names another."""

    def __init__(
        self, app: Runtime, source: SettingsSource, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._app = app
        self._read = source.read
        self._loop = loop
        self._file = source.file.absolute()
        self._serving = app.settings.model
        self._lock = asyncio.Lock()
        self.watcher = Watcher([self._file.parent], self._changed, recursive=False)

    def _changed(self, paths: set[Path]) -> None:
        if any(p.absolute() == self._file for p in paths):
            future = asyncio.run_coroutine_threadsafe(self.apply(), self._loop)
            future.add_done_callback(_log_failure)

    async def apply(self) -> bool:
        """Read the settings again and switch when they name another model; True on a switch."""
        app = self._app
        async with self._lock:
            try:
                fresh = await asyncio.to_thread(self._read)
            except SettingsError as exc:
                app.engine.fail(str(exc), str(self._file))
                return False
            if model_identity(fresh.model) == model_identity(self._serving):
                app.engine.clear_error()
                return False
            settings = dataclasses.replace(app.settings, model=fresh.model)
            source = model_source(settings)
            try:
                engine = make_engine(settings)
            except (OSError, ValueError) as exc:
                app.engine.fail(str(exc), source)
                return False
            if not await app.engine.switch(engine, source):
                return False
            self._serving = fresh.model
            return True


def watch_model_setting(app: Runtime, source: SettingsSource) -> ModelReloader:
    """Start following the settings file; stop it with `.watcher.stop()`."""
    reloader = ModelReloader(app, source, asyncio.get_running_loop())
    reloader.watcher.start()
    return reloader


def _log_failure(future: concurrent.futures.Future[bool]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("following %s failed", SETTINGS_FILE, exc_info=future.exception())
