"""Private documents stay where they belong, through the real discord.py and slack-bolt.

The handbook library gains `hr/salaries.md`, restricted by its `knowledge.yaml` to alice. The
same question about it is asked in every kind of place. Where someone else can read the answer
(a public channel, a guild channel, bob's DM, a private channel bob is in), the restricted text
never reaches the prompt, and its file name never reaches anything the fake platform received
(messages, edits, blocks, ephemeral notes, responses) nor the store's record of sources; where
only alice reads it (her DM, `/ask` answered privately, a private channel of hers alone), the
answer is grounded in it and cites it.

The engine is scripted: what is checked is what the bot gives the model and shows around its
words (the librarian cites its sources), not what a model makes of them. Every negative case
waits for its own answer (the strict librarian's decline) before anything is compared.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bots.chat.model import Turn
from bots.chat.visibility import visible_history
from bots.knowledge.audience import Reader
from bots.runtime import Runtime
from bots.settings import Settings
from tests.fakes.discord_env import MODEL_TIMEOUT_S, StartDiscord
from tests.fakes.engines import ScriptedEngine
from tests.fakes.projects import write
from tests.fakes.slack import DM, FakeSlack
from tests.fakes.slack_env import SlackStarts, answered, events_url
from tests.fakes.waiting import until

SECRET = "Band seven pays 95,000 zorkmids"
QUESTION = "What do the salary bands pay in zorkmids?"
FILE = "salaries.md"
TITLE = "Salary bands"  # what a sources line shows of it
REPLY = "Here is what the handbook says."
ALICE, BOB = "U0ALICE01", "U0BOB0001"
PUBLIC, MIXED, ALICES = "C0PUBLIC1", "C0MIXED01", "C0ALICES1"


def restrict(project: Path, *, slack: str = ALICE, discord: str = "") -> None:
    write(project / "knowledge" / "handbook" / "hr" / FILE, f"# {TITLE}\n\n{SECRET}.\n")
    discord_line = f'    discord_users: ["{discord}"]\n' if discord else ""
    write(
        project / "knowledge" / "handbook" / "knowledge.yaml",
        f"audience:\n  - paths: ['hr/*']\n    slack_users: [{slack}]\n{discord_line}",
    )


def prompt_of(engine: ScriptedEngine, count: int) -> str:
    """The prompt of the engine's `count`-th request ("" if the reply needed no model)."""
    if len(engine.requests) < count:
        return ""
    return "\n".join(m.content for m in engine.requests[count - 1].messages)


def cites(turn: Turn) -> bool:
    return any(FILE in source.get("path", "") for source in turn.sources)


# --------------------------------------------------------------------------- Slack


@pytest.fixture
async def slack(
    tmp_path: Path, settings_for: Callable[..., Settings]
) -> AsyncIterator[tuple[Runtime, FakeSlack, str, ScriptedEngine]]:
    from tests.fakes.projects import write_project

    project = write_project(tmp_path)
    restrict(project)
    engine = ScriptedEngine(REPLY)
    starts = SlackStarts()
    app = Runtime.create(settings_for(project, default_persona="librarian"), engine=engine)
    await app.start()
    starts.apps.append(app)
    fake = await starts.fake()
    fake.private = {MIXED: [ALICE, BOB], ALICES: [ALICE]}
    fake.outside.add("C0OUTSIDE")
    adapter = await starts.adapter(app, fake, "http")
    yield app, fake, events_url(adapter), engine
    await starts.close()


async def test_slack_uses_a_restricted_document_only_where_alice_alone_reads(
    slack: tuple[Runtime, FakeSlack, str, ScriptedEngine],
) -> None:
    app, fake, url, engine = slack

    async def ask(user: str, channel: str, *, mention: bool = True) -> Turn:
        event = fake.user_message(QUESTION, channel=channel, user=user, mention=mention)
        status, _, _ = await fake.post_event(url, event)
        assert status == 200
        return await answered(app, channel, event["ts"])

    def everything_received() -> str:
        received = [json.dumps(call.args, default=str) for call in fake.calls]
        return "\n".join([*received, *map(json.dumps, fake.responses)])

    public = await ask(ALICE, PUBLIC)  # (a) a public channel: everyone reads it
    bob_dm = await ask(BOB, "D0BOBDM01", mention=False)  # (c) a DM of someone not allowed
    mixed = await ask(ALICE, MIXED)  # a private channel bob is in too

    assert engine.requests == []  # nothing the strict librarian may use: declined, no model
    assert not any(cites(turn) for turn in (public, bob_dm, mixed))
    received = everything_received()
    assert SECRET not in received and FILE not in received and TITLE not in received

    alice_dm = await ask(ALICE, DM, mention=False)  # (b) alice's own DM
    assert SECRET in prompt_of(engine, 1) and cites(alice_dm)
    own = await ask(ALICE, ALICES)  # a private channel of alice alone (and the bot)
    assert SECRET in prompt_of(engine, 2) and cites(own)
    # (f) /ask where the bot is not a member: answered through response_url, to alice alone.
    fields = fake.command("/ask", QUESTION, channel="C0OUTSIDE", user=ALICE)
    status, _, _ = await fake.post_command(url, fields)
    assert status == 200
    await fake.wait_for(lambda: TITLE in json.dumps(fake.responses))
    assert SECRET in prompt_of(engine, 3)
    assert TITLE in "".join(m.text + json.dumps(m.blocks) for m in fake.bot_messages(DM))


async def test_slack_history_of_a_private_answer_never_feeds_a_shared_place(
    slack: tuple[Runtime, FakeSlack, str, ScriptedEngine],
) -> None:
    app, fake, url, engine = slack
    event = fake.user_message(QUESTION, channel=DM, user=ALICE)
    await fake.post_event(url, event)
    dm_turn = await answered(app, DM, event["ts"])
    assert cites(dm_turn)
    # The document is made public-but-for-bob: the DM's past exchange must not follow alice
    # into a place bob reads, even if a conversation key were reused there.
    persona = app.service.persona("librarian")
    stored = app.store.file.turns(dm_turn.conversation_id)
    access = app.knowledge.access

    shared = Reader.members("slack", [ALICE, BOB])
    assert visible_history(persona, stored, shared, access) == []
    assert visible_history(persona, stored, Reader.alone("slack", ALICE), access) == stored
    assert engine.requests  # the DM answer used the model


# --------------------------------------------------------------------------- Discord


async def test_discord_uses_a_restricted_document_only_where_alice_alone_reads(
    start_discord: StartDiscord, project: Path
) -> None:
    engine = ScriptedEngine(REPLY)
    env = await start_discord(engine=engine, default_persona="librarian")
    alice = str(env.users["alice"]["id"])
    restrict(project, discord=alice)
    handbook = env.app.knowledge.index_for_library("handbook")
    await until(lambda: handbook.access(f"hr/{FILE}"), what="the audience read")

    async def ask(user: str, channel: str) -> Turn:
        message = env.say(user, channel, f"librarian: {QUESTION}", mention=channel != "dm")
        turn, _ = await env.answer(message, MODEL_TIMEOUT_S)
        return turn

    def everything_received() -> str:
        return "\n".join(json.dumps(call.body, default=str) for call in env.fake.calls)

    guild = await ask("alice", "general")  # (d) a guild channel: everyone who reads it
    bob_dm = await ask("bob", "dm")
    assert engine.requests == [] and not cites(guild) and not cites(bob_dm)
    received = everything_received()
    assert SECRET not in received and FILE not in received and TITLE not in received

    alice_dm = await ask("alice", "dm")  # (e) alice's DM
    assert SECRET in prompt_of(engine, 1) and cites(alice_dm)

    # (f) /ask private:true in the guild: an ephemeral answer only alice sees.
    env.fake.slash(
        env.bot,
        env.users["alice"],
        env.channels["general"],
        "ask",
        [
            {"name": "question", "type": 3, "value": QUESTION},
            {"name": "persona", "type": 3, "value": "librarian"},
            {"name": "private", "type": 5, "value": True},
        ],
    )
    callback = await env.fake.wait_for(lambda: env.fake.calls_to("POST", r"/callback$"))
    assert callback[0].body["type"] == 5 and callback[0].body["data"]["flags"] & 64

    def final() -> Any:
        edits = env.fake.calls_to("PATCH", r"/messages/@original$")
        return edits and FILE in (edits[-1].content or "") and edits[-1]

    await env.fake.wait_for(final, MODEL_TIMEOUT_S)
    assert SECRET in prompt_of(engine, 2)
