"""A pytest plugin: keep every log of the session and fail the run if a test secret is in one.

- Logs: every record logged in the test process goes to `<basetemp>/session-logs/pytest.log`;
  `bots serve` subprocesses write theirs under the tests' tmp dirs (`serve.log`, ...). At the end
  of the session every `*.log` under the session's base temp dir is read.
- Secrets: every value of a secret field (`repr=False`: tokens, signing secret, API keys) of any
  settings object built during the session, whether by `load_settings` or by a test constructing
  `SlackSettings(bot_token=...)`, plus whatever a test passes to `register_secret` (tokens it
  hands to a subprocess through the environment).

A hit fails the session with the file, the line and which secret it was (never the secret).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Shorter values could match ordinary text; every secret the suite uses is longer.
MIN_SECRET_CHARS = 8
SESSION_LOG = "session-logs/pytest.log"

_secrets: set[str] = set()
_base: list[Path] = []


@dataclass(frozen=True)
class Leak:
    """A secret found in a log file (the secret itself is not repeated)."""

    path: Path
    line: int
    secret_hint: str


def register_secret(*values: str) -> None:
    """Add values the session's logs must never contain."""
    _secrets.update(v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_CHARS)


def known_secrets() -> frozenset[str]:
    return frozenset(_secrets)


def hint(secret: str) -> str:
    """Enough to tell which secret it was without printing it."""
    return f"{secret[:4]}… ({len(secret)} chars)"


def find_leaks(paths: Iterable[Path], secrets: Collection[str]) -> list[Leak]:
    """Every line of the files that contains one of the secrets."""
    leaks = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            leaks.extend(Leak(path, number, hint(s)) for s in secrets if s in line)
    return leaks


def _watch_settings() -> None:
    """Register the secret fields of every settings object constructed from now on."""
    import bots.settings as settings_module

    for cls in list(vars(settings_module).values()):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            continue
        secret_fields = [f.name for f in dataclasses.fields(cls) if not f.repr]
        if secret_fields:
            cls.__init__ = _registering(cls.__init__, secret_fields)  # type: ignore[misc]


def _registering(init: Any, names: list[str]) -> Any:
    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        for name in names:
            value = getattr(self, name)
            register_secret(*(value if isinstance(value, tuple) else (value,)))

    return wrapper


def pytest_configure(config: pytest.Config) -> None:
    _watch_settings()


@pytest.fixture(scope="session", autouse=True)
def session_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Write every log record of the test process to a file the final scan reads."""
    base = tmp_path_factory.getbasetemp()
    _base.append(base)
    path = base / SESSION_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _base:
        return
    logs = sorted(_base[0].rglob("*.log"))
    leaks = find_leaks(logs, known_secrets())
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"secret scan: {len(logs)} log files, {len(known_secrets())} secrets, "
            f"{len(leaks)} leaks"
        )
        for leak in leaks:
            reporter.write_line(f"  LEAK {leak.path}:{leak.line}: {leak.secret_hint}", red=True)
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
