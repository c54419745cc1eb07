"""Progress of long runs (indexing a large library, embedding its chunks): a bar or log lines.

A run reports `advance` as it goes; nothing shows unless it is still running after SHOW_AFTER_S,
so the common refresh of a few changed files stays silent. On a terminal the bar redraws one
stderr line in place; elsewhere (a service's log, a pipe, a test) a log line of the `logger` given
comes every LOG_EVERY_S. Only one bar draws at a time: a run that starts while another is drawing
(two libraries indexed at once) reports in log lines rather than fight over the line.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

SHOW_AFTER_S = 1.0
LOG_EVERY_S = 15.0
REDRAW_EVERY_S = 0.2
BAR_WIDTH = 24

_drawing = threading.Lock()


class Progress:
    """One run of `total` steps of `unit` (e.g. "chunks"), described by `label`."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str,
        *,
        logger: logging.Logger,
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.total = max(total, 0)
        self.unit = unit
        self.done = 0
        self._logger = logger
        self._stream = stream if stream is not None else sys.stderr
        self._started = time.monotonic()
        self._last = 0.0
        self._bar = False  # whether this run holds the terminal line

    def advance(self, steps: int = 1) -> None:
        """Count `steps` more done; draws or logs when it is time to."""
        self.done = min(self.total, self.done + steps)
        now = time.monotonic()
        elapsed = now - self._started
        if elapsed < SHOW_AFTER_S:
            return
        if not self._bar and self._last == 0.0 and self._is_terminal():
            self._bar = _drawing.acquire(blocking=False)
        if self._bar:
            if now - self._last >= REDRAW_EVERY_S or self.done == self.total:
                self._last = now
                self._stream.write("\r" + self.line(elapsed))
                self._stream.flush()
        elif now - self._last >= LOG_EVERY_S or self._last == 0.0:
            self._last = now
            self._logger.info("%s", self.line(elapsed))

    def finish(self) -> None:
        """End the run: the bar's last state stays on its line; a logged run logs its total."""
        elapsed = time.monotonic() - self._started
        if self._bar:
            self._stream.write("\r" + self.line(elapsed) + "\n")
            self._stream.flush()
            self._bar = False
            _drawing.release()
        elif self._last:
            self._logger.info("%s", self.line(elapsed))

    def line(self, elapsed: float) -> str:
        """`label [#####     ] done/total unit, seconds` (with an estimate of what is left)."""
        share = self.done / self.total if self.total else 1.0
        filled = round(share * BAR_WIDTH)
        text = (
            f"{self.label} [{'#' * filled}{' ' * (BAR_WIDTH - filled)}] "
            f"{self.done}/{self.total} {self.unit}, {elapsed:.0f} s"
        )
        if 0 < self.done < self.total:
            text += f" ({elapsed * (self.total - self.done) / self.done:.0f} s left)"
        return text

    def _is_terminal(self) -> bool:
        isatty = getattr(self._stream, "isatty", None)
        return bool(isatty and isatty())
