"""Shared fixtures: real persona folders in tmp_path, the real embedded model, a running app."""

from __future__ import annotations

import os
import tempfile
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bots.settings import Settings, load_settings

if TYPE_CHECKING:
    from bots.app import App

# Every log of the session is kept and scanned for the suite's secrets at the end.
pytest_plugins = ["tests.secret_scan"]

# The Q8_0 copy of the model that every local engine serves, made once for the whole suite (and
# kept between runs) instead of once per test project; `bots serve` subprocesses inherit it.
MODEL_CACHE_DIR = str(Path(tempfile.gettempdir()) / "bots-test-model-cache")
os.environ["BOTS_MODEL_CACHE_DIR"] = MODEL_CACHE_DIR


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--soak`: tests/test_soak.py sends 2,000 messages instead of its short default."""
    parser.addoption("--soak", action="store_true", default=False, help="run the full soak")


HANDBOOK = {
    "vacation.md": """\
        # Vacation
        ## Vacation days
        Every employee gets 25 vacation days per year. Unused days expire on March 31.
        """,
    "expenses.md": """\
        # Expenses
        ## Expense reports
        File expense reports in the finance portal within 30 days. Attach every receipt.
        """,
    "security.md": """\
        # Security
        ## Passwords
        Passwords must be at least 14 characters long and stored in the password manager.
        """,
}


def write(path: Path, text: str) -> Path:
    """Write dedented text, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def persona_md(body: str = "You are a helpful test bot. Answer briefly.", **front: str) -> str:
    header = "".join(f"{k}: {v}\n" for k, v in front.items())
    return f"---\n{header}---\n{body}\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with a strict handbook persona, a chatty persona and one shared library."""
    for name, text in HANDBOOK.items():
        write(tmp_path / "knowledge" / "handbook" / name, text)
    write(
        tmp_path / "personas" / "librarian" / "persona.md",
        persona_md(
            "You are the librarian. Answer only from the documents.",
            name="Libby",
            knowledge="[handbook]",
            grounding="strict",
            citations="true",
        ),
    )
    write(
        tmp_path / "personas" / "pirate" / "persona.md",
        persona_md("You are a pirate. Always answer like a pirate.", name="Pete"),
    )
    return tmp_path


@pytest.fixture
def settings_for() -> Callable[..., Settings]:
    def make(root: Path, **overrides: object) -> Settings:
        # The product's default engine (batched, in a supervised worker), with a small window
        # and short replies to keep the suite fast.
        base: dict[str, object] = {
            "model.n_ctx": 4096,
            "model.max_tokens": 48,
            "model.cache_dir": MODEL_CACHE_DIR,
        }
        return load_settings(root, environ={}, overrides={**base, **overrides})

    return make


@pytest.fixture
async def app(project: Path, settings_for: Callable[..., Settings]) -> AsyncIterator[App]:
    """A started app on the project folder with the real embedded model and the real watcher."""
    from bots.app import App

    application = App.create(settings_for(project))
    await application.start()
    try:
        yield application
    finally:
        await application.close()
