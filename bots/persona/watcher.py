"""Watch the persona and knowledge folders; report debounced batches of changed paths."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)

# Editors write several events per save (temp file, rename, chmod): wait until the folder has
# been quiet this long before reloading, but never delay a busy folder by more than MAX_DELAY_S.
QUIET_S = 0.05
MAX_DELAY_S = 1.0
# Where the OS reports closes (inotify), hold a batch until a file open for writing closes, but
# no longer than this. The hold only saves reads: these events lag the file system, so the
# loader itself refuses a file still open for writing, and the writer's close reloads it.
WRITE_HOLD_S = 5.0


class Watcher:
    """Calls `on_change(paths)` on its own thread after each quiet period following changes."""

    def __init__(
        self,
        roots: Iterable[Path],
        on_change: Callable[[set[Path]], None],
        *,
        quiet_s: float = QUIET_S,
        max_delay_s: float = MAX_DELAY_S,
        recursive: bool = True,
    ) -> None:
        self.roots = [r for r in roots if r.is_dir()]
        self._recursive = recursive
        self._on_change = on_change
        self._quiet_s = quiet_s
        self._max_delay_s = max_delay_s
        self._pending: set[Path] = set()
        self._writing: dict[Path, float] = {}
        self._reports_closes = False
        self._first = 0.0
        self._last = 0.0
        self._cond = threading.Condition()
        self._stopped = False
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        observer = Observer()
        self._reports_closes = type(observer).__name__ == "InotifyObserver"
        handler = _Handler(self._record)
        for root in self.roots:
            observer.schedule(handler, str(root), recursive=self._recursive)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._thread = threading.Thread(target=self._run, name="bots-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
        if self._thread is not None:
            self._thread.join(5)

    def _record(self, path: Path, kind: str) -> None:
        with self._cond:
            now = time.monotonic()
            if not self._pending:
                self._first = now
            self._pending.add(path)
            self._last = now
            if self._reports_closes:
                # Only writes mark a file as open: a created symlink or hard link never closes.
                if kind == "modified":
                    self._writing.setdefault(path, now)
                elif kind in ("closed", "deleted", "moved"):
                    self._writing.pop(path, None)
            self._cond.notify_all()

    def _due(self, now: float) -> float:
        """When the pending batch may be reloaded."""
        due = min(self._last + self._quiet_s, self._first + self._max_delay_s)
        for started in self._writing.values():
            due = max(due, started + WRITE_HOLD_S)
        return due

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                now = time.monotonic()
                due = self._due(now)
                if now < due:
                    self._cond.wait(due - now)
                    continue
                batch, self._pending = self._pending, set()
                self._writing.clear()
            try:
                self._on_change(batch)
            except Exception:  # one bad batch must not stop watching
                log.exception("reload after file change failed")


class _Handler(FileSystemEventHandler):
    def __init__(self, record: Callable[[Path, str], None]) -> None:
        self._record = record

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        kind = "dir" if event.is_directory else event.event_type
        self._record(Path(str(event.src_path)), kind)
        dest = getattr(event, "dest_path", "")
        if dest:
            self._record(Path(str(dest)), "closed" if kind != "dir" else kind)
