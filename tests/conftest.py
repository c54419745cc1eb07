"""Shared fixtures: real persona folders in tmp_path, the real embedded model, a running app,
batched engines, Discord worlds, the Slack module app and its fakes (the kit itself is in
tests/fakes/)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest
import pytest_asyncio

from bots.settings import Settings, load_settings
from tests.fakes.projects import write_project

if TYPE_CHECKING:
    from bots.engine.batched import BatchedEngine
    from bots.runtime import Runtime
    from tests.fakes.discord_env import StartDiscord
    from tests.fakes.slack import FakeSlack
    from tests.fakes.slack_env import SlackStarts, Starter

# Every log of the session is kept and scanned for the suite's secrets at the end.
pytest_plugins = ["tests.secret_scan"]

# The Q8_0 copy of the model that every local engine serves, made once for the whole suite (and
# kept between runs) instead of once per test project; `bots serve` subprocesses inherit it.
MODEL_CACHE_DIR = str(Path(tempfile.gettempdir()) / "bots-test-model-cache")
os.environ["BOTS_MODEL_CACHE_DIR"] = MODEL_CACHE_DIR

# The engine tests' batched engines: a small window and cache. On a machine with a GPU build of
# llama-cpp-python, BOTS_TEST_N_GPU_LAYERS=-1 runs them with the model offloaded (the README's
# "GPU" section).
ENGINE_N_CTX = 2048
ENGINE_KV_CELLS = 4096
GPU_LAYERS = int(os.environ.get("BOTS_TEST_N_GPU_LAYERS", "0"))


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--soak`: tests/test_soak.py sends 2,000 messages instead of its short default."""
    parser.addoption("--soak", action="store_true", default=False, help="run the full soak")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with a strict handbook persona, a chatty persona and one shared library."""
    return write_project(tmp_path)


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
async def app(project: Path, settings_for: Callable[..., Settings]) -> AsyncIterator[Runtime]:
    """A started app on the project folder with the real embedded model and the real watcher."""
    from bots.runtime import Runtime

    application = Runtime.create(settings_for(project))
    await application.start()
    try:
        yield application
    finally:
        await application.close()


class MakeEngine(Protocol):
    """`await make_engine(**options)`: a started BatchedEngine (`model_path` and the engine's own
    keyword arguments, over the defaults above)."""

    async def __call__(self, **options: Any) -> BatchedEngine: ...


@pytest.fixture
async def make_engine() -> AsyncIterator[MakeEngine]:
    """Batched engines on the embedded model, started by the test; all closed after it."""
    from bots.engine.batched import BatchedEngine
    from bots.engine.model_files import default_model_path

    engines: list[BatchedEngine] = []

    async def make(**options: Any) -> BatchedEngine:
        options.setdefault("n_ctx", ENGINE_N_CTX)
        options.setdefault("kv_cells", ENGINE_KV_CELLS)
        options.setdefault("n_gpu_layers", GPU_LAYERS)
        path = options.pop("model_path", default_model_path())
        engine = BatchedEngine(path, **options)
        await engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.close()


@pytest.fixture
async def start_discord(
    project: Path, settings_for: Callable[..., Settings]
) -> AsyncIterator[StartDiscord]:
    """Start Discord worlds on the project (see `DiscordWorlds.start`); all stopped after."""
    from tests.fakes.discord_env import DiscordWorlds

    worlds = DiscordWorlds(project, settings_for)
    yield worlds.start
    await worlds.stop_all()


# Slack: one app with the real model serves a whole module (its tests run in the module's event
# loop: `pytestmark = pytest.mark.asyncio(loop_scope="module")`); each test gets its own fakes
# and adapters.


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bot(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Runtime]:
    """One started app on the Slack project (`write_slack_project`), the real model."""
    from bots.runtime import Runtime
    from tests.fakes.slack_env import write_slack_project

    root = tmp_path_factory.mktemp("slack-project")
    write_slack_project(root)
    settings = load_settings(
        root,
        environ={},
        overrides={
            "model.n_ctx": 4096,
            "model.max_tokens": 48,
            "model.n_threads": 1,
            "policy.rate_limit_messages": 1000,
            "default_persona": "pirate",
        },
    )
    application = Runtime.create(settings)
    await application.start()
    try:
        yield application
    finally:
        await application.close()


@pytest_asyncio.fixture(loop_scope="module")
async def slack() -> AsyncIterator[SlackStarts]:
    """Fake Slacks and adapters started by a test (`await slack.fake(streaming=True)`,
    `await slack.adapter(app, fake)`), all stopped after it."""
    from tests.fakes.slack_env import SlackStarts

    starts = SlackStarts()
    try:
        yield starts
    finally:
        await starts.close()


@pytest_asyncio.fixture(loop_scope="module")
async def fake(slack: SlackStarts) -> FakeSlack:
    """A fresh fake Slack for the test."""
    return await slack.fake()


@pytest_asyncio.fixture(loop_scope="module")
async def start_bot(bot: Runtime, slack: SlackStarts) -> Starter:
    """Start the module's app on a fake: `await start_bot(fake, "http"|"socket", **limits)`."""

    async def start(server: FakeSlack, mode: str = "http", **limits: Any) -> Any:
        return await slack.adapter(bot, server, mode, **limits)

    return start


# PostgreSQL: one throwaway cluster for the session (started on first use), a fresh database
# per test that asks for one.


@pytest.fixture(scope="session")
def postgres() -> Any:
    """The session's PostgreSQL server (tests/postgres_server.py); skipped with the reason
    where none can be started."""
    from tests.postgres_server import PostgresMissing, remove, start_postgres

    try:
        server = start_postgres()
    except PostgresMissing as exc:
        pytest.skip(f"no PostgreSQL: {exc}")
    try:
        yield server
    finally:
        remove(server)


@pytest.fixture
def database_url(postgres: Any) -> str:
    """A fresh, empty database on the session's server."""
    return str(postgres.new_database())
