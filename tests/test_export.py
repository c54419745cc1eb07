"""`bots export`: the store's replies of a persona as training data, through the real chat service.

A small project (an open persona on the handbook, with `hr/salaries.md` restricted to alice) is
asked questions through the real `ChatService` with a scripted engine (what is checked is what the
store recorded and what the export rebuilds from it, not what a model makes of a prompt), on
SQLite and on a real PostgreSQL; reactions go through the service's own feedback path. Then the
export is read back file by file. Older stores (made before replies recorded what they were made
from) are migrated in place, rows and all, and still export.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bots.chat.model import Incoming
from bots.chat.prompt import system_message
from bots.cli import main
from bots.finetune.export import MIN_EXAMPLES, ExportOptions, ExportResult, export_persona
from bots.finetune.records import DECLINED, LEGACY
from bots.knowledge.audience import Reader
from bots.runtime import Runtime
from bots.settings import Settings
from tests.fakes.engines import ScriptedEngine
from tests.fakes.projects import persona_md, write, write_handbook
from tests.old_stores import write_old_sqlite

PERSONA = "helper"
SECRET = "Band seven pays 95,000 zorkmids"
ALICE, BOB, CAROL = "U0ALICE01", "U0BOB0001", "U0CAROL01"
DAYS = "How many vacation days do I get?"
EXPIRE = "When do unused vacation days expire?"
EXPENSES = "Where do I file expense reports?"
SALARY = "What do the salary bands pay in zorkmids?"
GOOD_DAYS = "You get 25 vacation days per year."
BAD_EXPIRE = "They never expire."
GOOD_EXPIRE = "Unused days expire on March 31."


def write_export_project(root: Path) -> Path:
    """The handbook, a restricted salaries page, and an open persona that reads both."""
    write_handbook(root)
    write(root / "knowledge" / "handbook" / "hr" / "salaries.md", f"# Salary bands\n\n{SECRET}.\n")
    write(
        root / "knowledge" / "handbook" / "knowledge.yaml",
        f"audience:\n  - paths: ['hr/*']\n    slack_users: [{ALICE}]\n",
    )
    write(
        root / "personas" / PERSONA / "persona.md",
        persona_md("You are the helper. Answer briefly.", knowledge="[handbook]"),
    )
    write(
        root / "personas" / "pinner" / "persona.md",
        persona_md("You are the pinner.", knowledge="[handbook]", pinned="[handbook/security.md]"),
    )
    write(
        root / "personas" / "clerk" / "persona.md",
        persona_md("You are the clerk.", knowledge="[handbook]", grounding="strict"),
    )
    return root


@dataclass
class Bot:
    app: Runtime
    engine: ScriptedEngine

    async def ask(
        self,
        text: str,
        answer: str,
        *,
        platform: str = "slack",
        place: str = "C0PUBLIC1",
        user: str = BOB,
        reader: Reader | None = None,
        persona: str = PERSONA,
    ) -> int:
        """Ask through the real service; the stored reply's turn id."""
        self.engine.text = answer
        reader = reader or Reader(platform)
        incoming = Incoming(platform, place, user, text, persona, reader=reader)
        reply = await self.app.service.start(incoming)
        async for _ in reply:
            pass
        assert reply.turn_id is not None
        return reply.turn_id

    async def rate(self, turn_id: int, user: str, value: int) -> None:
        await self.app.store.add_feedback(turn_id, user, value)

    async def export(self, out: Path, persona: str = PERSONA, **options: Any) -> ExportResult:
        return await export_persona(
            self.app.store,
            self.app.service.persona(persona),
            lambda path: self.app.knowledge.access(persona, path),
            ExportOptions(out=out, **options),
        )


async def converse(bot: Bot) -> dict[str, int]:
    """The conversations every export test reads."""
    turns = {
        "days": await bot.ask(DAYS, GOOD_DAYS, user=ALICE),
        "bad": await bot.ask(EXPIRE, BAD_EXPIRE, user=ALICE),
        "good": await bot.ask(EXPIRE, GOOD_EXPIRE, user=ALICE),  # asked again after a thumbs-down
        "expenses": await bot.ask(
            EXPENSES, "Use the finance portal.", platform="discord", place="G1:C1", user="2" * 18
        ),
        "salary": await bot.ask(
            SALARY,
            "Band seven pays 95,000.",
            place="D0ALICE01",
            user=ALICE,
            reader=Reader.alone("slack", ALICE),
        ),
    }
    await bot.rate(turns["days"], CAROL, 1)
    await bot.rate(turns["bad"], ALICE, -1)
    await bot.rate(turns["good"], ALICE, 1)
    await bot.rate(turns["salary"], ALICE, 1)
    return turns


@pytest.fixture(params=["sqlite", "postgresql"])
async def bot(
    request: pytest.FixtureRequest, tmp_path: Path, settings_for: Callable[..., Settings]
) -> AsyncIterator[Bot]:
    write_export_project(tmp_path)
    overrides: dict[str, Any] = {}
    if request.param == "postgresql":
        overrides["database_url"] = request.getfixturevalue("database_url")
    engine = ScriptedEngine()
    app = Runtime.create(settings_for(tmp_path, **overrides), engine=engine)
    await app.start(watch=False)
    try:
        yield Bot(app, engine)
    finally:
        await app.close()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def test_each_reply_records_its_persona_version_and_what_its_prompt_held(bot: Bot) -> None:
    first = await bot.ask(DAYS, GOOD_DAYS)
    second = await bot.ask(EXPIRE, GOOD_EXPIRE)
    conversation = await bot.app.store.conversation_id("slack", "C0PUBLIC1")
    by_id = {t.id: t for t in await bot.app.store.turns(conversation)}
    persona = bot.app.service.persona(PERSONA)
    reply = by_id[second]
    assert reply.persona_version == persona.content_hash
    made = reply.made_from
    assert made["system"] == bot.engine.requests[-1].messages[0].content
    assert made["history"] == {"turns": [first - 1, first]}
    assert made["reader"]["users"] is None
    assert any("vacation.md" in c["path"] and "March 31" in c["text"] for c in made["chunks"])
    # What the store recorded rebuilds the prompt the model was given, message for message.
    result = await bot.export(bot.app.settings.data_dir / "exports" / "check")
    assert result.counts["chat.jsonl"] == 2
    rebuilt = lines(result.folder / "chat.jsonl")[1]["messages"][:-1]
    sent = bot.engine.requests[-1].messages
    assert [(m["role"], m["content"]) for m in rebuilt] == [(m.role, m.content) for m in sent]


async def test_pinned_documents_are_recorded_and_rebuilt_whole(bot: Bot, tmp_path: Path) -> None:
    await bot.ask(DAYS, GOOD_DAYS, persona="pinner")
    conversation = await bot.app.store.conversation_id("slack", "C0PUBLIC1")
    (_, reply) = await bot.app.store.turns(conversation)
    (pinned,) = reply.made_from["pinned"]
    assert pinned["path"] == "handbook/security.md" and "14 characters" in pinned["text"]
    result = await bot.export(tmp_path / "out", persona="pinner")
    (example,) = lines(result.folder / "chat.jsonl")
    sent = bot.engine.requests[-1].messages
    assert [m["content"] for m in example["messages"][:-1]] == [m.content for m in sent]
    assert '<document source="handbook/security.md"' in sent[-1].content


async def test_export_writes_the_right_rows_with_weights_from_feedback(
    bot: Bot, tmp_path: Path
) -> None:
    turns = await converse(bot)
    result = await bot.export(tmp_path / "out")

    chat = lines(result.folder / "chat.jsonl")
    finals = [example["messages"][-1] for example in chat]
    assert [m["content"] for m in finals] == [GOOD_DAYS, GOOD_EXPIRE, "Use the finance portal."]
    assert all(m == {"role": "assistant", "content": m["content"], "weight": 1} for m in finals)
    # The thumbs-down answer is never trained on: context at weight 0 in the later example.
    again = chat[1]["messages"]
    assert [m["role"] for m in again] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert [(m["content"], m["weight"]) for m in again if m["role"] == "assistant"][:2] == [
        (GOOD_DAYS, 0),
        (BAD_EXPIRE, 0),
    ]
    assert all(set(m) == {"role", "content"} for m in again if m["role"] != "assistant")

    (pair,) = lines(result.folder / "preferences.jsonl")
    assert set(pair) == {"input", "preferred_output", "non_preferred_output"}
    assert pair["preferred_output"] == [{"role": "assistant", "content": GOOD_EXPIRE}]
    assert pair["non_preferred_output"] == [{"role": "assistant", "content": BAD_EXPIRE}]
    assert EXPIRE in pair["input"]["messages"][-1]["content"]

    kto = lines(result.folder / "kto.jsonl")
    assert [(row["completion"][0]["content"], row["label"]) for row in kto] == [
        (GOOD_DAYS, True),
        (BAD_EXPIRE, False),
        (GOOD_EXPIRE, True),
    ]
    assert all(set(row) == {"prompt", "completion", "label"} for row in kto)

    manifest = json.loads((result.folder / "manifest.json").read_text())
    persona = bot.app.service.persona(PERSONA)
    assert manifest["persona"] == PERSONA and manifest["persona_version"] == persona.content_hash
    assert manifest["persona_versions"] == {persona.content_hash: 3}
    assert manifest["files"]["chat.jsonl"]["examples"] == 3
    assert manifest["data_hash"] == f"sha256:{result.data_hash}"
    assert manifest["enough"] is False and manifest["min_examples"] == MIN_EXAMPLES
    assert [r["turn_id"] for r in lines(result.folder / "provenance.jsonl")] == [
        turns["days"],
        turns["good"],
        turns["expenses"],
    ]


async def test_nothing_from_a_restricted_document_is_exported(bot: Bot, tmp_path: Path) -> None:
    turns = await converse(bot)
    conversation = await bot.app.store.conversation_id("slack", "D0ALICE01")
    (_, salary) = await bot.app.store.turns(conversation)
    assert salary.id == turns["salary"]
    assert any("salaries.md" in c["path"] for c in salary.made_from["chunks"])  # it was used
    result = await bot.export(tmp_path / "out")
    written = "\n".join(p.read_text() for p in result.folder.iterdir())
    assert SECRET not in written and "salaries.md" not in written and SALARY not in written
    assert result.excluded == {"restricted to some readers (a tuned model answers everywhere)": 1}
    # The rules changed since: the place it was answered in may no longer see the document.
    write(
        bot.app.settings.knowledge_dir / "handbook" / "knowledge.yaml",
        f"audience:\n  - paths: ['hr/*']\n    slack_users: [{BOB}]\n",
    )
    bot.app.knowledge.index_for_library("handbook").refresh()
    later = await bot.export(tmp_path / "later")
    assert later.excluded == {"which the audience rules no longer allow where it was answered": 1}


async def test_sources_are_in_the_prompt_with_sources_and_absent_without(
    bot: Bot, tmp_path: Path
) -> None:
    await converse(bot)
    with_sources = lines((await bot.export(tmp_path / "with")).folder / "chat.jsonl")
    without = lines(
        (await bot.export(tmp_path / "without", with_sources=False)).folder / "chat.jsonl"
    )
    asked = with_sources[0]["messages"][-2]["content"]
    assert '<document source="handbook/vacation.md"' in asked and asked.endswith(
        f"Question: {DAYS}"
    )
    assert without[0]["messages"][-2]["content"] == DAYS
    assert not any("<document" in m["content"] for e in without for m in e["messages"])


async def test_user_ids_become_pseudonyms_stable_across_runs(bot: Bot, tmp_path: Path) -> None:
    await bot.ask(f"<@{CAROL}> says: {DAYS}", GOOD_DAYS, user=ALICE)
    first = lines((await bot.export(tmp_path / "a")).folder / "provenance.jsonl")
    second = lines((await bot.export(tmp_path / "b")).folder / "provenance.jsonl")
    assert first[0]["user"] == second[0]["user"]
    assert first[0]["user"].startswith("user-") and ALICE not in json.dumps(first)
    chat = (tmp_path / "a" / "chat.jsonl").read_text()
    assert ALICE not in chat and CAROL not in chat  # a mention of a known user is replaced too
    real = lines((await bot.export(tmp_path / "c", real_ids=True)).folder / "provenance.jsonl")
    assert real[0]["user"] == ALICE


async def test_platform_and_since_choose_the_replies(bot: Bot, tmp_path: Path) -> None:
    import datetime

    await converse(bot)
    discord = await bot.export(tmp_path / "d", platforms=("discord",))
    assert discord.counts["chat.jsonl"] == 1 and discord.counts["kto.jsonl"] == 0
    later = datetime.date.today() + datetime.timedelta(days=2)
    assert (await bot.export(tmp_path / "none", since=later)).counts["chat.jsonl"] == 0


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_export_project(tmp_path)


async def invoke(args: list[str]) -> Result:
    """`bots ARGS` through click's runner, off the test's event loop (it runs its own)."""
    return await asyncio.to_thread(CliRunner().invoke, main, args)


def cli_args(project: Path, *more: str) -> list[str]:
    return [
        "export",
        PERSONA,
        "--personas",
        str(project / "personas"),
        "--knowledge",
        str(project / "knowledge"),
        "--data-dir",
        str(project / ".bots"),
        *more,
    ]


async def test_a_tiny_dataset_says_how_many_examples_there_are_and_are_needed(
    project: Path, settings_for: Callable[..., Settings]
) -> None:
    engine = ScriptedEngine()
    settings = settings_for(project, data_dir=str(project / ".bots"))
    app = Runtime.create(settings, engine=engine)
    await app.start(watch=False)
    bot = Bot(app, engine)
    await bot.ask(DAYS, GOOD_DAYS)
    await bot.ask("What is the capital of Peru?", "Lima.")  # open persona: answered, unrated
    await app.close()

    result = await invoke(cli_args(project, "--out", str(project / "out")))
    assert result.exit_code == 1, result.output
    assert f"only 2 examples to train on; at least {MIN_EXAMPLES} are needed" in result.output
    assert "chat.jsonl" in result.output and (project / "out" / "manifest.json").is_file()
    empty = await invoke(cli_args(project, "--platform", "discord", "--out", str(project / "e")))
    assert f"only 0 examples to train on; at least {MIN_EXAMPLES} are needed" in empty.output
    unknown = await invoke(["export", "nobody", "--personas", str(project / "personas")])
    assert unknown.exit_code == 1 and "no persona 'nobody'" in unknown.output


async def test_a_reply_declined_without_the_model_is_not_exported(bot: Bot, tmp_path: Path) -> None:
    await bot.ask("What is the capital of Peru?", "Lima.", persona="clerk")
    assert bot.engine.requests == []  # nothing relevant: the strict clerk declined on its own
    result = await bot.export(tmp_path / "out", persona="clerk")
    assert result.counts["chat.jsonl"] == 0 and result.excluded == {DECLINED: 1}


async def test_an_old_store_is_migrated_and_its_replies_exported_without_sources(
    project: Path, settings_for: Callable[..., Settings]
) -> None:
    settings = settings_for(project)
    write_old_sqlite(settings.db_path, PERSONA)
    engine = ScriptedEngine()
    app = Runtime.create(settings, engine=engine)
    await app.start(watch=False)
    try:
        bot = Bot(app, engine)
        restricted = "restricted to some readers (a tuned model answers everywhere)"
        with_sources = await bot.export(project / "with")
        assert with_sources.counts["chat.jsonl"] == 1  # the greeting: it had no sources
        assert with_sources.excluded == {LEGACY: 1, restricted: 1}
        without = await bot.export(project / "without", with_sources=False)
        assert without.excluded == {restricted: 1}
        days = lines(without.folder / "chat.jsonl")[1]["messages"]
        assert [(m["role"], m["content"], m.get("weight")) for m in days[1:]] == [
            ("user", "Hello there", None),
            ("assistant", "Hello! How can I help?", 0),
            ("user", "How many vacation days do I get?", None),
            ("assistant", "25 days a year.", 1),
        ]
        assert days[0]["content"] == system_message(app.service.persona(PERSONA))
        assert json.loads((without.folder / "manifest.json").read_text())["persona_versions"] == {
            "unrecorded": 2
        }
    finally:
        await app.close()
