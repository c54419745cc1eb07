"""Logging for every `bots` command: human lines by default, JSON lines with a flag.

The bottom layer, beside settings: the CLI sets it up, and so does the engine's worker process,
which must not import anything above the engine.

Whatever the format, the secrets of the settings are masked in every line, tracebacks included:
a token that reaches a log by accident (an exception message quoting a URL or a header) still
never lands in a file. Replies are logged as one line of figures, never their text.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Iterable
from typing import Any

HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "[redacted]"
# Shorter values would mask ordinary words; no real token is this short.
MIN_SECRET_CHARS = 6
# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_FIELDS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", (), None)).keys()
    | {"message", "asctime", "taskName"}
)


def level_for(verbose: int) -> int:
    """`-v` count -> level: warnings by default, -v info, -vv debug."""
    return logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, pid, plus the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class RedactingFormatter(logging.Formatter):
    """Wraps a formatter and masks every secret in what it produced."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self._inner = inner
        values = {s for s in secrets if len(s) >= MIN_SECRET_CHARS}
        # In JSON output a secret with quotes or backslashes appears escaped.
        values |= {json.dumps(s, ensure_ascii=False)[1:-1] for s in values}
        self._secrets = sorted(values, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = self._inner.format(record)
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


class _BotsHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `setup_logging` installs; writes to whatever `sys.stderr` is at the time."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:
        return sys.stderr


def setup_logging(
    verbose: int = 0,
    *,
    level: int | None = None,
    json_logs: bool = False,
    secrets: Iterable[str] = (),
) -> None:
    """Log to stderr at the level `verbose` (or `level`) names; JSON lines if `json_logs`.

    A second call replaces the first one's setup. Like `logging.basicConfig`, a setup made by
    someone else (a test runner, a program embedding bots) is left alone.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _BotsHandler)]
    if len(ours) < len(root.handlers):
        return
    for handler in ours:
        root.removeHandler(handler)
    handler = _BotsHandler()
    inner = JsonFormatter() if json_logs else logging.Formatter(HUMAN_FORMAT)
    handler.setFormatter(RedactingFormatter(inner, secrets))
    root.addHandler(handler)
    root.setLevel(level if level is not None else level_for(verbose))
