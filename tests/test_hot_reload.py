"""Hot reload end to end with the real watcher: edits are live on the next reply, broken edits
keep the last good version serving, folders come and go, no-op saves reload nothing."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bots.chat.model import ChatRefused, Incoming
from bots.runtime import Runtime
from bots.settings import Settings
from tests.fakes.engines import ScriptedEngine
from tests.fakes.projects import persona_md, write
from tests.fakes.waiting import until


@pytest.fixture
async def app(project: Path, settings_for: Callable[..., Settings]) -> AsyncIterator[Runtime]:
    """The project's app with the real watcher. Its engine is scripted: what a reload changes is
    the persona and the prompt built from it, whatever a model would then write."""
    application = Runtime.create(settings_for(project), engine=ScriptedEngine("Noted."))
    await application.start()
    try:
        yield application
    finally:
        await application.close()


async def system_prompt(app: Runtime, persona_id: str, text: str = "Hello") -> str:
    reply = await app.service.start(
        Incoming("test", "t", "u", text, persona_id, remember=False, max_tokens=4, temperature=0.0)
    )
    async for _ in reply:
        pass
    assert reply.prompt is not None
    return reply.prompt.messages[0].content


async def test_edit_is_live_on_the_next_reply(app: Runtime, project: Path) -> None:
    path = project / "personas" / "pirate" / "persona.md"
    assert "pirate" in await system_prompt(app, "pirate")
    write(path, persona_md("You are a gentle poet. Answer in rhyme.", name="Pete"))
    await until(lambda: "poet" in app.registry.get("pirate").instructions)  # type: ignore[union-attr]
    assert "poet" in await system_prompt(app, "pirate")


async def test_message_to_a_folder_deleted_before_the_watcher_saw_it_is_refused(
    project: Path, settings_for: Callable[..., Settings]
) -> None:
    # No watcher: the registry still serves the snapshot of a folder that is gone, the window
    # a real watcher leaves open between the delete and its debounced reload.
    app = Runtime.create(settings_for(project))
    await app.start(watch=False, load_model=False)
    try:
        assert app.registry.get("pirate") is not None
        shutil.rmtree(project / "personas" / "pirate")
        with pytest.raises(ChatRefused) as refused:
            await app.service.start(Incoming("test", "t", "u", "hi", "pirate", remember=False))
        assert refused.value.status == 404
        assert str(refused.value) == "That persona doesn't exist: 'pirate' (have: librarian)."
    finally:
        await app.close()


async def test_broken_edit_keeps_last_good_persona_and_fix_clears_error(
    app: Runtime, project: Path
) -> None:
    path = project / "personas" / "pirate" / "persona.md"
    good_hash = app.registry.get("pirate").content_hash  # type: ignore[union-attr]
    path.write_text("---\nname: Pete\ncitations: perhaps\n---\nYou are broken.\n")
    await until(lambda: bool(app.registry.errors()))
    [error] = app.registry.errors()
    assert (error.path, error.line, error.key) == (path, 3, "citations")
    assert app.registry.get("pirate").content_hash == good_hash  # type: ignore[union-attr]
    assert "pirate" in await system_prompt(app, "pirate")
    path.write_text(persona_md("You are a fixed pirate.", name="Pete"))
    await until(lambda: not app.registry.errors())
    assert "fixed pirate" in await system_prompt(app, "pirate")


async def test_unknown_library_is_reported_then_cleared_when_it_appears(
    app: Runtime, project: Path
) -> None:
    path = project / "personas" / "pirate" / "persona.md"
    path.write_text(persona_md("Pirate with a map.", knowledge="[maps]"))
    await until(lambda: any(e.key == "knowledge" for e in app.registry.errors()))
    write(project / "knowledge" / "maps" / "islands.md", "# Islands\nTortuga is north.\n")
    await until(lambda: not app.registry.errors())
    assert app.registry.get("pirate").knowledge == ("maps",)  # type: ignore[union-attr]


async def test_new_folder_appears_and_deleted_folder_disappears(
    app: Runtime, project: Path
) -> None:
    write(project / "personas" / "tutor" / "persona.md", persona_md("You are a tutor."))
    await until(lambda: app.registry.get("tutor") is not None)
    for child in (project / "personas" / "tutor").iterdir():
        child.unlink()
    (project / "personas" / "tutor").rmdir()
    await until(lambda: app.registry.get("tutor") is None)


async def test_atomic_save_with_temp_file_and_rename(app: Runtime, project: Path) -> None:
    folder = project / "personas" / "pirate"
    temp = folder / ".persona.md.tmp123"
    temp.write_text(persona_md("You are an atomic pirate.", name="Pete"))
    os.replace(temp, folder / "persona.md")
    await until(lambda: "atomic" in app.registry.get("pirate").instructions)  # type: ignore[union-attr]
    assert app.registry.get("pirate") is not None


async def saved_and_seen(app: Runtime, project: Path) -> None:
    """Add a persona and wait until it is loaded: the watcher has handled every earlier save."""
    write(project / "personas" / "lookout" / "persona.md", persona_md("You keep watch."))
    await until(lambda: app.registry.get("lookout") is not None, what="a later save loaded")


async def test_noop_save_does_not_reload(app: Runtime, project: Path) -> None:
    path = project / "personas" / "pirate" / "persona.md"
    before = app.registry.state("pirate")
    path.write_bytes(path.read_bytes())
    await saved_and_seen(app, project)
    after = app.registry.state("pirate")
    assert after is before


async def test_document_edit_reaches_retrieval(app: Runtime, project: Path) -> None:
    librarian = app.registry.get("librarian")
    assert librarian is not None
    write(
        project / "knowledge" / "handbook" / "parking.md",
        "# Parking\nThe bicycle garage code is 4711.\n",
    )

    def found() -> bool:
        hits = app.service.retrieve(librarian, "bicycle garage code")
        return bool(hits) and hits[0].path == "handbook/parking.md"

    await until(found)


async def test_slow_write_is_never_loaded_half_written(app: Runtime, project: Path) -> None:
    path = project / "personas" / "pirate" / "persona.md"
    full = persona_md("You are a slow pirate. " + "Arr! " * 40, name="Pete")
    seen: list[str] = []
    app.registry.add_listener(
        lambda e: (
            seen.append(e.state.persona.instructions)  # type: ignore[union-attr]
            if e.persona_id == "pirate" and e.state and e.state.persona
            else None
        )
    )
    with path.open("w") as out:  # truncate, then write in pieces with pauses
        for start in range(0, len(full), 40):
            out.write(full[start : start + 40])
            out.flush()
            await asyncio.sleep(0.15)
    await until(lambda: "slow pirate" in app.registry.get("pirate").instructions)  # type: ignore[union-attr]
    await saved_and_seen(app, project)
    assert all(text == full.split("---\n", 2)[2].strip() for text in seen), seen
