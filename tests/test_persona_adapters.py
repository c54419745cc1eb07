"""`adapter:` in persona.md: a LoRA adapter named by version (`bots train`'s folders) or file,
checked when the persona loads, live on the next reply when edited, and a bad file an error that
names it while the last good persona keeps serving.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bots.chat.model import Incoming
from bots.engine.adapter_files import AdapterFiles, file_sha256
from bots.engine.model_files import default_model_path
from bots.persona.registry import PersonaRegistry
from bots.runtime import Runtime
from bots.settings import Settings
from tests.fakes.lora import write_lora, write_version
from tests.fakes.projects import persona_md, write
from tests.fakes.waiting import until

BODY = "You are a pirate. Always answer like a pirate."


@pytest.fixture(scope="module")
def base_sha256() -> str:
    return file_sha256(default_model_path())


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """(personas folder, adapters folder), with persona `pirate` and no adapter yet."""
    personas, adapters = tmp_path / "personas", tmp_path / ".bots" / "adapters"
    write(personas / "pirate" / "persona.md", persona_md(BODY))
    return personas, adapters


def registry_for(personas: Path, adapters: Path) -> PersonaRegistry:
    return PersonaRegistry(personas, lambda: (), None, AdapterFiles(adapters, default_model_path()))


def set_adapter(personas: Path, value: str) -> Path:
    """persona.md with `adapter: value` on line 3 (line 2 is the name)."""
    return write(personas / "pirate" / "persona.md", persona_md(BODY, name="Pete", adapter=value))


def test_a_version_resolves_to_its_folder_with_its_manifest(
    folders: tuple[Path, Path], base_sha256: str
) -> None:
    personas, adapters = folders
    path = write_version(adapters, "pirate", 3, base_sha256=base_sha256)
    set_adapter(personas, "pirate@3")
    registry = registry_for(personas, adapters)
    registry.load_all()
    persona = registry.get("pirate")
    assert registry.errors() == []
    assert persona is not None and persona.adapter is not None
    assert persona.adapter.name == "pirate@3" and persona.adapter.path == path.resolve()
    assert dict(persona.adapter.manifest)["version"] == "3"


def test_a_file_path_and_a_scale(folders: tuple[Path, Path]) -> None:
    personas, adapters = folders
    write_lora(personas / "pirate" / "tuned" / "mine.gguf")
    set_adapter(personas, "{name: tuned/mine.gguf, scale: 0.5}")
    registry = registry_for(personas, adapters)
    registry.load_all()
    persona = registry.get("pirate")
    assert persona is not None and persona.adapter is not None
    assert (persona.adapter.name, persona.adapter.scale) == ("mine.gguf", 0.5)
    set_adapter(personas, "none")
    registry.reload("pirate")
    assert registry.get("pirate").adapter is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "no such file"),
        ("cut-short", "cut short"),
        ("not-gguf", "not a GGUF file"),
        ("wrong-shapes", "made for another model"),
        ("wrong-manifest", "wrong-base adapter"),
        ("no-manifest", "manifest.json: no such file"),
    ],
)
def test_a_bad_adapter_keeps_the_last_good_persona_with_an_error_naming_the_file(
    folders: tuple[Path, Path], base_sha256: str, damage: str, message: str
) -> None:
    personas, adapters = folders
    write_version(adapters, "pirate", 1, base_sha256=base_sha256)
    source = set_adapter(personas, "pirate@1")
    registry = registry_for(personas, adapters)
    registry.load_all()
    good = registry.get("pirate")
    assert good is not None and good.adapter is not None

    version = adapters / "pirate" / "2"
    if damage != "missing":
        write_version(adapters, "pirate", 2, base_sha256=base_sha256, seed=2)
    if damage == "not-gguf":
        (version / "adapter.gguf").write_bytes(b"PK\x03\x04 a zip, not an adapter")
    elif damage == "cut-short":
        whole = (version / "adapter.gguf").read_bytes()
        (version / "adapter.gguf").write_bytes(whole[: len(whole) // 2])
    elif damage == "wrong-shapes":
        write_lora(version / "adapter.gguf", wrong_base=True)
    elif damage == "wrong-manifest":
        (version / "manifest.json").write_text(json.dumps({"base_model_sha256": "0" * 64}))
    elif damage == "no-manifest":
        (version / "manifest.json").unlink()
    set_adapter(personas, "pirate@2")
    assert registry.reload("pirate") == "error"
    (error,) = registry.errors()
    assert (error.path, error.line, error.key) == (source, 3, "adapter")
    assert str(version) in error.message and message in error.message
    assert registry.get("pirate") is good


def test_an_adapter_value_of_the_wrong_form_is_an_error(folders: tuple[Path, Path]) -> None:
    personas, adapters = folders
    set_adapter(personas, "{name: tuned/mine.gguf, scale: 9}")
    registry = registry_for(personas, adapters)
    registry.load_all()
    (error,) = registry.errors()
    assert "scale" in error.message
    set_adapter(personas, "latest-and-greatest")
    registry.reload("pirate")
    (error,) = registry.errors()
    assert "NAME@VERSION" in error.message


@pytest.fixture
async def app(
    project: Path, settings_for: Callable[..., Settings], base_sha256: str
) -> AsyncIterator[Runtime]:
    """The project with two adapter versions for the pirate, the real model (its default
    supervised batched engine) and the real watcher."""
    settings = settings_for(project)
    adapters = settings.data_dir / "adapters"
    for version in (1, 2):
        write_version(adapters, "pirate", version, base_sha256=base_sha256, seed=version)
    application = Runtime.create(settings)
    await application.start()
    try:
        yield application
    finally:
        await application.close()


async def answer(app: Runtime) -> str:
    reply = await app.service.start(
        Incoming(
            "test",
            "t",
            "u",
            "Where is the treasure?",
            "pirate",
            remember=False,
            max_tokens=16,
            temperature=0.0,
        )
    )
    return "".join([piece async for piece in reply])


async def switch(app: Runtime, project: Path, value: str | None) -> None:
    personas = project / "personas"
    if value is None:
        write(personas / "pirate" / "persona.md", persona_md(BODY, name="Pete"))
    else:
        set_adapter(personas, value)

    def serving() -> bool:
        persona = app.registry.get("pirate")
        name = persona.adapter.name if persona and persona.adapter else None
        return name == value

    await until(serving)


async def test_switching_the_adapter_by_editing_persona_md_is_live_on_the_next_reply(
    app: Runtime, project: Path
) -> None:
    base = await answer(app)
    await switch(app, project, "pirate@1")
    first = await answer(app)
    await switch(app, project, "pirate@2")
    second = await answer(app)
    assert len({base, first, second}) == 3, "each version must change the reply"
    await switch(app, project, "pirate@1")
    assert await answer(app) == first
    await switch(app, project, None)
    assert await answer(app) == base
