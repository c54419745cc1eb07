"""Switching the served model live: `bots model use` on a running `bots serve` (a reply in
flight finishes, the next comes from the new model, a broken file keeps the old one serving
with the error shown), and the `ModelSwitch` rules on engine doubles."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from bots.engine.base import ChatMessage, EngineError, EngineStatus, GenerationRequest
from bots.engine.model_files import default_model_path
from bots.engine.quantize import prepared_model_path
from bots.engine.switch import ModelSwitch
from tests.cli_runner import run_cli
from tests.conftest import MODEL_CACHE_DIR
from tests.fakes.engines import ScriptedEngine
from tests.fakes.projects import persona_md, write
from tests.serve_process import ONE_THREAD, StreamReader, start_server

SWITCH_BOUND_S = 60.0
REQUEST = GenerationRequest((ChatMessage("user", "hi"),))


class NamedEngine(ScriptedEngine):
    """A scripted engine with a model name, that records whether it was closed."""

    def __init__(self, name: str, *, fails: bool = False, **options: object) -> None:
        super().__init__(f"from {name}", **options)  # type: ignore[arg-type]
        self.name, self.fails, self.closed = name, fails, False

    def status(self) -> EngineStatus:
        return EngineStatus(self.name, 0, 8, 0)

    async def start(self) -> None:
        if self.fails:
            raise EngineError(f"{self.name}: not a GGUF file")

    async def close(self) -> None:
        self.closed = True


async def text_of(switch: ModelSwitch) -> str:
    return "".join([p.text async for p in switch.stream(REQUEST)])


async def test_a_reply_in_flight_ends_on_the_old_model_and_the_next_starts_on_the_new() -> None:
    gate = asyncio.Event()
    old, new = NamedEngine("old.gguf", gate=gate), NamedEngine("new.gguf")
    switch = ModelSwitch(old, "old.gguf")
    await switch.start()
    in_flight = asyncio.create_task(text_of(switch))
    while not old.requests:
        await asyncio.sleep(0.001)
    assert await switch.switch(new, "new.gguf")
    assert switch.status().model == "new.gguf" and await text_of(switch) == "from new.gguf"
    assert not old.closed  # its reply is still streaming
    gate.set()
    assert await in_flight == "from old.gguf"
    while not old.closed:  # its cached prefixes go with it, once its last reply ended
        await asyncio.sleep(0.01)
    assert switch.requests() == {"old.gguf": 1, "new.gguf": 1}
    assert switch.state().switches == 1 and switch.state().source == "new.gguf"


async def test_a_model_that_does_not_load_keeps_the_old_one_and_shows_the_error() -> None:
    old, broken = NamedEngine("old.gguf"), NamedEngine("broken.gguf", fails=True)
    switch = ModelSwitch(old, "old.gguf")
    seen: list[str] = []
    switch.add_listener(lambda state: seen.append(state.error))
    await switch.start()
    assert not await switch.switch(broken, "/models/broken.gguf")
    state = switch.state()
    assert state.name == "old.gguf" and "not a GGUF file" in state.error
    assert state.error_source == "/models/broken.gguf" and broken.closed
    assert await text_of(switch) == "from old.gguf"
    switch.clear_error()
    assert switch.state().error == "" and seen == [state.error, ""]


async def test_closing_a_reply_cancels_its_generation_at_once() -> None:
    engine = NamedEngine("m.gguf", piece_chars=1, delay_s=0.01)
    switch = ModelSwitch(engine, "m.gguf")
    stream = switch.stream(REQUEST)
    assert (await anext(stream)).text == "f"
    await stream.aclose()  # type: ignore[attr-defined]
    assert engine.cancelled == 1


def write_project(root: Path) -> Path:
    write(root / "personas" / "pirate" / "persona.md", persona_md("You are a pirate.", name="P"))
    return root


def served(url: str) -> dict[str, object]:
    model: dict[str, object] = httpx.get(url + "/status", timeout=10).json()["model"]
    return model


def wait_for(url: str, key: str, test: object) -> dict[str, object]:
    deadline = time.monotonic() + SWITCH_BOUND_S
    while True:
        model = served(url)
        if callable(test) and test(model[key]):
            return model
        assert time.monotonic() < deadline, f"/status model never matched: {model}"
        time.sleep(0.1)


def ask(url: str) -> str:
    body = {"model": "pirate", "messages": [{"role": "user", "content": "Ahoy?"}],
            "max_tokens": 8, "user": "ann"}  # fmt: skip
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def requests_by_model(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    pattern = re.compile(r'^bots_model_requests_total\{model="([^"]+)"\} (\S+)$', re.M)
    return {name: float(value) for name, value in pattern.findall(text)}


@pytest.mark.timeout(240)
def test_model_use_switches_a_running_server_live(tmp_path: Path) -> None:
    root = write_project(tmp_path)
    # The second model: the embedded one re-quantized to Q8_0, a different file and weights.
    q8 = prepared_model_path(default_model_path(), Path(MODEL_CACHE_DIR))
    other = shutil.copy(q8, root / "other-q8_0.gguf")
    broken = root / "truncated.gguf"
    broken.write_bytes(Path(other).read_bytes()[:2_000_000])  # a download cut short
    config = root / "bots.toml"
    config.write_text("# the project's settings\n[model]\nquantize_q8 = false\n")
    server = start_server(root, env=ONE_THREAD)
    try:
        first = served(server.url)
        assert first["name"] == default_model_path().name and not first["error"]
        reader = StreamReader(server.url, {
            "model": "pirate", "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": 400, "stream": True, "user": "bob"})  # fmt: skip
        reader.start()
        assert reader.first.wait(60)
        code, out = run_cli(root, "--config", str(config), "model", "use", str(other))
        assert code == 0, out
        assert "# the project's settings" in config.read_text()  # the rest of the file kept
        wait_for(server.url, "name", lambda name: name == "other-q8_0.gguf")
        reader.join(120)
        assert reader.done and not [e for e in reader.events if "error" in e]
        assert reader.text  # the reply begun on the old model finished there
        assert ask(server.url)
        assert requests_by_model(server.url)["other-q8_0.gguf"] == 1
        code, out = run_cli(root, "--config", str(config), "model", "use", str(broken))
        assert code == 0, out
        failed = wait_for(server.url, "error", bool)
        assert failed["name"] == "other-q8_0.gguf" and failed["error_source"] == str(broken)
        assert ask(server.url)  # the old model serves on
        assert requests_by_model(server.url)["other-q8_0.gguf"] == 2
        page = httpx.get(server.url + "/", timeout=10).text
        assert "other-q8_0.gguf" in page and "truncated.gguf" in page and "failed" in page
    finally:
        assert server.stop() == 0


async def test_settings_that_name_no_loadable_model_keep_the_old_one(tmp_path: Path) -> None:
    from bots.model_reload import ModelReloader, SettingsSource
    from bots.runtime import Runtime
    from bots.settings import SettingsError, load_settings

    root = write_project(tmp_path)
    settings = load_settings(root, environ={})
    app = Runtime.create(settings, NamedEngine("old.gguf"))
    await app.start(watch=False)
    answers: list[object] = [SettingsError("bots.toml: model.n_ctx: bad value 'x'")]

    def read() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    source = SettingsSource(root / "bots.toml", read)  # type: ignore[arg-type]
    reloader = ModelReloader(app, source, asyncio.get_running_loop())
    try:
        assert not await reloader.apply()
        assert "model.n_ctx: bad value" in app.engine.state().error
        missing = load_settings(root, environ={}, overrides={"model.path": str(root / "no.gguf")})
        answers.append(missing)
        assert not await reloader.apply()
        state = app.engine.state()
        assert "no such file" in state.error and state.name == "old.gguf"
        answers.append(settings)  # saved back as it was: nothing to switch, the error goes
        assert not await reloader.apply()
        assert app.engine.state().error == ""
    finally:
        await app.close()
