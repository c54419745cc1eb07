"""Pinned documents: named in persona.md, read whole into every prompt, within the knowledge
budget; missing, unreadable or too large ones are errors on their line, and the persona keeps
serving its last good version (with the last good text)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bots.chat.model import Incoming
from bots.checks import run_checks
from bots.knowledge.audience import EVERYONE, Reader
from bots.persona.model import PersonaInvalid
from bots.runtime import Runtime
from bots.settings import Settings
from tests.fakes.engines import ScriptedEngine
from tests.fakes.projects import persona_md, write, write_project

LEAVE = """\
    # Parental leave
    Parents get 16 weeks of paid leave. Tell HR three months before the leave starts.
    """
Start = Callable[[], Awaitable[Runtime]]
BUDGET = 300  # tokens for knowledge; ScriptedEngine counts a token per 4 characters


def write_pinning(root: Path, pinned: str, **front: str) -> Path:
    write(root / "personas" / "librarian" / "policies" / "leave.md", LEAVE)
    return write(
        root / "personas" / "librarian" / "persona.md",
        persona_md(
            "You are the librarian. Answer only from the documents.",
            knowledge="[handbook]",
            grounding="strict",
            pinned=pinned,
            **front,
        ),
    )


@pytest.fixture
async def start(tmp_path: Path, settings_for: Callable[..., Settings]) -> AsyncIterator[Start]:
    write_project(tmp_path)
    engine = ScriptedEngine("Parents get 16 weeks of paid leave.")
    apps: list[Runtime] = []

    async def begin() -> Runtime:
        settings = settings_for(tmp_path, **{"retrieval.max_knowledge_tokens": BUDGET})
        app = Runtime.create(settings, engine=engine)
        await app.start(watch=False)
        apps.append(app)
        return app

    yield begin
    for app in apps:
        await app.close()


async def ask(app: Runtime, question: str) -> str:
    reply = await app.service.start(Incoming("test", "", "t", question, "librarian"))
    async for _ in reply:
        pass
    assert app.engine.current.requests  # type: ignore[attr-defined]
    return str(app.engine.current.requests[-1].messages[-1].content)  # type: ignore[attr-defined]


async def test_pinned_documents_go_whole_into_every_prompt(start: Start, tmp_path: Path) -> None:
    write_pinning(tmp_path, "[policies/leave.md, handbook/security.md]")
    app = await start()
    persona = app.service.persona("librarian")
    assert [d.path for d in persona.pinned] == ["policies/leave.md", "handbook/security.md"]

    prompt = await ask(app, "How many vacation days do I get?")
    assert '<document source="policies/leave.md">' in prompt
    assert "Parents get 16 weeks of paid leave." in prompt, "whole, whatever was asked"
    assert "at least 14 characters" in prompt
    assert '<document source="handbook/vacation.md"' in prompt, "retrieval still adds its hits"
    assert prompt.index("policies/leave.md") < prompt.index("handbook/vacation.md")

    prompt = await ask(app, "How long must passwords be?")
    assert prompt.count('source="handbook/security.md"') == 1, "a pinned page is not repeated"


async def test_a_missing_or_outside_pinned_document_is_an_error_on_its_line(
    tmp_path: Path,
) -> None:
    from bots.chat.pinned import PinnedReader
    from bots.persona.loader import load_persona

    write_project(tmp_path)
    source = write_pinning(tmp_path, "\n  - policies/leave.md\n  - policies/gone.md\n  - ../x.md")
    reader = PinnedReader(tmp_path / "knowledge", len, BUDGET)
    with pytest.raises(PersonaInvalid) as raised:
        load_persona(source.parent, ["handbook"], pinned=reader)
    assert [str(e) for e in raised.value.errors] == [
        f"{source}:6: pinned: 'policies/gone.md': no such document in the persona folder",
        f"{source}:7: pinned: '../x.md' must be a path inside the persona folder or a library "
        "it names",
    ]


async def test_pinned_documents_that_do_not_fit_are_an_error_and_the_last_good_serves(
    start: Start, tmp_path: Path
) -> None:
    write_pinning(tmp_path, "[policies/leave.md]")
    app = await start()
    leave = tmp_path / "personas" / "librarian" / "policies" / "leave.md"
    leave.write_text(LEAVE + "More rules about leave follow here. " * 60)

    assert app.registry.reload("librarian") == "error"
    (error,) = app.registry.state("librarian").errors  # type: ignore[union-attr]
    source = tmp_path / "personas" / "librarian" / "persona.md"
    assert str(error).startswith(f"{source}:4: pinned:")
    assert f"every prompt has room for {BUDGET} (retrieval.max_knowledge_tokens)" in str(error)
    prompt = await ask(app, "How much parental leave do I get?")
    assert "Parents get 16 weeks" in prompt and "More rules" not in prompt, "the last good text"

    leave.write_text(LEAVE.replace("16", "18"))
    assert app.registry.reload("librarian") == "loaded"
    assert "Parents get 18 weeks" in await ask(app, "How much parental leave do I get?")


async def test_bots_check_names_a_missing_pinned_document(
    tmp_path: Path, settings_for: Callable[..., Settings]
) -> None:
    write_project(tmp_path)
    source = write_pinning(tmp_path, "[handbook/holidays.md]")
    problems, _ = run_checks(settings_for(tmp_path))
    assert problems == [
        f"{source}:4: pinned: 'handbook/holidays.md': no such document in library 'handbook'"
    ]


async def test_an_edit_to_a_pinned_library_page_is_live_on_the_next_reply(
    start: Start, tmp_path: Path
) -> None:
    write_pinning(tmp_path, "[handbook/security.md]")
    app = await start()
    page = tmp_path / "knowledge" / "handbook" / "security.md"
    page.write_text(page.read_text().replace("14 characters", "16 characters"))
    app.on_files_changed({page})  # what the watcher reports after the save
    assert "at least 16 characters" in await ask(app, "How many vacation days do I get?")


async def test_pinned_documents_are_named_among_the_stored_sources(
    start: Start, tmp_path: Path
) -> None:
    write_pinning(tmp_path, "[policies/leave.md]")
    app = await start()
    reply = await app.service.start(Incoming("test", "p", "t", "Vacation days?", "librarian"))
    async for _ in reply:
        pass
    (turn,) = [t for t in await app.service.history("test", "p") if t.role == "assistant"]
    paths = {source["path"]: source.get("pinned", False) for source in turn.sources}
    assert paths["policies/leave.md"] is True and paths["handbook/vacation.md"] is False


async def test_a_restricted_pinned_document_stays_out_of_places_that_may_not_see_it(
    start: Start, tmp_path: Path
) -> None:
    write(tmp_path / "knowledge" / "handbook" / "hr" / "bands.md", "# Bands\n\nBand 7 pays 95k.\n")
    write(
        tmp_path / "knowledge" / "handbook" / "knowledge.yaml",
        "audience:\n  - paths: ['hr/*']\n    slack_users: [U0ALICE01]\n",
    )
    write_pinning(tmp_path, "[handbook/hr/bands.md]")
    app = await start()
    for reader, shown in ((EVERYONE, False), (Reader.alone("slack", "U0ALICE01"), True)):
        incoming = Incoming("slack", "", "U0ALICE01", "Vacation days?", "librarian", reader=reader)
        reply = await app.service.start(incoming)
        async for _ in reply:
            pass
        prompt = app.engine.current.requests[-1].messages[-1].content  # type: ignore[attr-defined]
        assert ("Band 7 pays 95k." in prompt) is shown
        assert any(s["path"] == "handbook/hr/bands.md" for s in reply.source_dicts()) is shown
