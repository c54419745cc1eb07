"""What every chat platform must do, stated once and run on Discord and on Slack.

Each test starts one world through a driver (tests/fakes/platforms.py): the loopback fake of the
platform, the real library and the real adapter, and a real app whose engine is a
`ScriptedEngine` (none of these behaviours depends on what the model writes, and a scripted
reply can be held, refused as busy, or made long or hostile on cue). Slack runs in HTTP Events
mode, edited replies; the behaviours that depend on how a reply is shown run on Slack's
streaming API too ("slack-streaming").

A check that something did NOT happen never waits and hopes: after the messages that must get
no reply, a good message is sent and its answer awaited, and only then is everything the bot
showed compared with what it should have shown.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bots.adapters.render import CURSOR
from bots.chat import notices
from bots.settings import Settings
from tests.fakes.discord_env import StartDiscord
from tests.fakes.engines import BUSY_RETRY_AFTER_S, ScriptedEngine
from tests.fakes.platforms import (
    PLATFORMS,
    Driver,
    Said,
    feedback,
    said_to,
    start_discord_driver,
    start_slack_driver,
    turns_after,
)
from tests.fakes.slack_env import SlackStarts
from tests.fakes.waiting import until

Start = Callable[..., Awaitable[Driver]]
SHOWN_VARIANTS = [*PLATFORMS, "slack-streaming"]

REPLY = "Aye, the sea be calm."
CODE = "```python\n" + "\n".join(f"print('line {i}')" for i in range(120)) + "\n```"
LONG_REPLY = (
    "Here is the whole listing you asked for.\n\n"
    + CODE
    + "\n\n"
    + " ".join(f"word{i}" for i in range(400))
)
GROUNDED = "Every employee gets 25 vacation days per year."
INVENTED = "Add 4,817 bonus days at https://leave.example.com/days today!"
BAIT = "Hey @everyone and @here, look! <!channel> <!here> <@U0SOMEONE>"
FLOOD_MESSAGES = 30
FLOOD_LIMIT = 2


@pytest.fixture(params=PLATFORMS)
def platform(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def start(
    platform: str,
    start_discord: StartDiscord,
    project: Path,
    settings_for: Callable[..., Settings],
) -> AsyncIterator[Start]:
    """`await start(engine, **settings)`: one world on `platform`; settings are dotted names,
    a callable is given the channel ids by name (general, denied, outside)."""
    slack = SlackStarts()

    async def begin(engine: ScriptedEngine, **overrides: object) -> Driver:
        if platform == "discord":
            return await start_discord_driver(start_discord, engine, **overrides)
        streaming = platform == "slack-streaming"
        return await start_slack_driver(
            slack, project, settings_for, engine, streaming=streaming, **overrides
        )

    yield begin
    await slack.close()


def shown(said: list[Said]) -> list[Said]:
    """`said` in one order for comparing (platforms list public and private messages apart)."""
    return sorted(said, key=lambda s: (s.to, s.key, s.text))


def seen_by(bot: Driver, user: str) -> str:
    """Who sees a refusal said to `user`: only them where the platform can say it privately."""
    return user if bot.private_notices else ""


def replies(bot: Driver, text: str = REPLY) -> list[str]:
    """The keys of the messages answered with the scripted `text`."""
    return [s.to for s in bot.said() if s.text == text]


# --------------------------------------------------------------------------- personas


async def test_persona_edited_on_disk_changes_the_next_reply(start: Start, project: Path) -> None:
    engine = ScriptedEngine(REPLY)
    bot = await start(engine)
    before = await bot.answer(await bot.ask("alice", "Ahoy?"))
    assert [p.by for p in before.parts] == ["Pete"]

    source = project / "personas" / "pirate" / "persona.md"
    edited = source.read_text().replace("name: Pete", "name: Captain Pete")
    source.write_text(edited.replace("like a pirate", "in rhyme"))
    await until(
        lambda: (p := bot.app.registry.get("pirate")) and p.display_name == "Captain Pete",
        what="the edit reloaded",
    )
    after = await bot.answer(await bot.ask("alice", "Ahoy again?"))
    assert [p.by for p in after.parts] == ["Captain Pete"]
    first, second = (r.messages[0].content for r in engine.requests)
    assert "like a pirate" in first and "in rhyme" in second, "the new instructions are used"


# --------------------------------------------------------------------------- refusals


async def test_rate_limit_is_said_once_per_wait(start: Start) -> None:
    engine = ScriptedEngine(REPLY)
    bot = await start(engine, **{"policy.rate_limit_messages": 2})
    for number in range(2):
        await bot.answer(await bot.ask("bob", f"Question {number}?"))
    refused = [await bot.ask("bob", f"Question {number}?") for number in (2, 3)]
    await bot.answer(await bot.ask("alice", "Is the sea calm?"))

    (notice,) = [s for s in bot.said() if s.text != REPLY]
    assert notice.text.startswith("You're sending messages too fast; try again in ")
    assert notice.to == refused[0].key and notice.seen_by == seen_by(bot, "bob")
    assert said_to(bot, refused[1]) == [], "said once per wait, not to every message"
    assert engine.asked("Question") == 2 and engine.asked("sea calm") == 1
    assert len(replies(bot)) == 3


async def test_one_users_flood_is_capped_and_others_are_answered(start: Start) -> None:
    engine = ScriptedEngine(REPLY)
    bot = await start(engine, **{"policy.rate_limit_messages": FLOOD_LIMIT})
    flood = [await bot.ask("bob", f"Flood {n}?") for n in range(FLOOD_MESSAGES // 2)]
    other = await bot.ask("alice", "Is the sea calm today?")
    flood += [
        await bot.ask("bob", f"Flood {n}?") for n in range(FLOOD_MESSAGES // 2, FLOOD_MESSAGES)
    ]
    answer = await bot.answer(other)
    await bot.answer(await bot.ask("carol", "And after the flood?"))

    assert answer.text == REPLY
    assert engine.asked("Flood") == FLOOD_LIMIT and engine.asked("sea calm") == 1
    flooded = {f.key for f in flood}
    assert len([key for key in replies(bot) if key in flooded]) == FLOOD_LIMIT
    (notice,) = [s for s in bot.said() if s.text != REPLY]
    assert "too fast" in notice.text and notice.to in flooded, "the flooder is told once"
    assert notice.seen_by == seen_by(bot, "bob")


async def test_access_refusal_is_said_to_the_asker_alone(start: Start) -> None:
    engine = ScriptedEngine("The vault is open.")
    bot = await start(engine)
    denied = await bot.ask("bob", "vault: open up")
    allowed = await bot.answer(await bot.ask("alice", "vault: open up"))

    assert allowed.turn.persona_id == "vault"
    (notice,) = await bot.told(denied)
    assert notice.text == "Sorry, you don't have access to Vault."
    assert notice.seen_by == seen_by(bot, "bob")
    assert turns_after(bot, denied) == [], "nothing was stored for the refused message"
    assert engine.asked("open up") == 1
    assert shown(bot.said()) == shown([notice, *allowed.parts])


async def test_places_outside_the_policy_get_no_reply(start: Start) -> None:
    engine = ScriptedEngine(REPLY)
    bot = await start(
        engine,
        **{
            "policy.allow_channels": lambda c: f"{c['general']},{c['denied']}",
            "policy.deny_channels": lambda c: c["denied"],
        },
    )
    await bot.ask("alice", "Anyone?", channel="denied")
    await bot.ask("alice", "Anyone?", channel="outside")
    after = await bot.answer(await bot.ask("alice", "And here?"))
    assert engine.asked("Anyone") == 0, "only the allowed channel was answered"
    assert shown(bot.said()) == shown(after.parts), "and nothing was said elsewhere"


async def test_busy_model_is_said_where_the_reply_would_be(start: Start) -> None:
    bot = await start(ScriptedEngine(busy=True))
    asked = await bot.ask("alice", "Hello?")
    (notice,) = await bot.told(asked)
    assert notice.text == notices.busy(BUSY_RETRY_AFTER_S)
    assert notice.text == "I'm busy with other questions; please ask again in 3s."
    assert notice.seen_by == "", "said where the reply would have been, for all to see"
    assert bot.marks(asked) == bot.busy_marks


@pytest.mark.parametrize("platform", SHOWN_VARIANTS, indirect=True)
async def test_questions_waiting_for_the_model_show_their_place_until_answered(
    start: Start,
) -> None:
    turns = asyncio.Semaphore(0)
    engine = ScriptedEngine(REPLY, parallel=1, turns=turns)
    bot = await start(engine)
    first = await bot.ask("alice", "First?")
    await until(lambda: engine.running == 1, what="the first reply holds the model")
    second = await bot.ask("bob", "Second?")
    assert [s.text for s in await bot.told(second)] == [notices.ahead(1)]
    third = await bot.ask("carol", "Third?")
    (waiting,) = await bot.told(third)
    assert (
        waiting.text
        == notices.ahead(2)
        == "2 questions ahead of yours; your answer will show here."
    )
    assert waiting.seen_by == "", "shown where the answer will be"

    turns.release()
    answers = [await bot.answer(first)]
    await until(
        lambda: [s.text for s in said_to(bot, third)] == [notices.ahead(1)],
        what="the third question moved up",
    )
    for asked in (second, third):
        turns.release()
        answers.append(await bot.answer(asked))

    assert [a.text for a in answers] == [REPLY] * 3
    assert answers[2].parts[0].key == waiting.key, "the answer replaced its place in line"
    assert shown(bot.said()) == shown([p for a in answers for p in a.parts]), "nothing left over"


# --------------------------------------------------------------------------- what is ignored


async def test_malformed_payloads_get_no_reply_and_do_not_break_the_bot(start: Start) -> None:
    engine = ScriptedEngine("Fine.")
    bot = await start(engine)
    await bot.send_malformed()
    after = await bot.answer(await bot.ask("alice", "Still there?"))
    assert len(engine.requests) == 1, "only the well-formed message was answered"
    assert shown(bot.said()) == shown(after.parts), "nothing else got a reply, not a greeting"
    bot.check_connected()


async def test_messages_from_bots_and_from_itself_get_no_reply(start: Start) -> None:
    engine = ScriptedEngine("Hi.")
    bot = await start(engine)
    await bot.send_from_bots()
    after = await bot.answer(await bot.ask("alice", "And a person?"))
    assert len(engine.requests) == 1
    assert shown(bot.said()) == shown(after.parts)


# --------------------------------------------------------------------------- feedback


async def test_thumbs_on_a_reply_are_stored_as_feedback(start: Start) -> None:
    bot = await start(ScriptedEngine("Aye, twenty five days."))
    asked = await bot.ask("alice", "How many days?")
    answer = await bot.answer(asked)
    reply, turn = answer.parts[0].key, answer.turn.id
    await bot.react("alice", asked.key, "up")  # not the bot's reply: ignored
    await bot.react("carol", reply, "other")  # not a thumb: ignored
    await bot.react("bob", reply, "up")
    await bot.react("alice", reply, "down")
    await until(lambda: feedback(bot) == {("bob", 1, turn), ("alice", -1, turn)}, what="stored")
    await bot.react("bob", reply, "up", remove=True)
    await until(lambda: feedback(bot) == {("alice", -1, turn)}, what="removed")


# --------------------------------------------------------------------------- how a reply shows


@pytest.mark.parametrize("platform", SHOWN_VARIANTS, indirect=True)
async def test_stop_cuts_a_reply_under_way_with_a_note(start: Start) -> None:
    bot = await start(ScriptedEngine("word " * 400, piece_chars=5, delay_s=0.02))
    asked = await bot.ask("alice", "Talk for a long time.")
    await bot.told(asked)
    await bot.stop()
    final = said_to(bot, asked)[-1].text
    assert final.endswith(bot.note(notices.INTERRUPTED)) and CURSOR.strip() not in final
    assert bot.app.adapters[bot.platform] == "stopped"


@pytest.mark.parametrize("platform", SHOWN_VARIANTS, indirect=True)
async def test_long_reply_is_split_without_breaking_code_or_words(start: Start) -> None:
    bot = await start(ScriptedEngine(LONG_REPLY, piece_chars=97))
    answer = await bot.answer(await bot.ask("alice", "Show me the listing."))
    parts = [p.text for p in answer.parts]

    assert len(parts) >= 2
    assert all(len(p) <= bot.message_chars for p in parts), "never over the platform's limit"
    assert all(p.count("```") % 2 == 0 for p in parts), "code blocks closed per part"
    assert parts[1].startswith(bot.code_fence) or bot.code_fence in parts[0]
    words = " ".join(parts).replace("```python", "").replace("```", "")
    assert words.split() == LONG_REPLY.replace("```python", "").replace("```", "").split()
    bot.check_within_limits()


@pytest.mark.parametrize("platform", SHOWN_VARIANTS, indirect=True)
async def test_a_strict_persona_never_shows_an_invented_figure_or_link(start: Start) -> None:
    engine = ScriptedEngine(GROUNDED + " " + INVENTED, piece_chars=3, delay_s=0.005)
    bot = await start(engine)
    answer = await bot.answer(await bot.ask("alice", "librarian: How many vacation days?"))

    assert answer.turn.persona_id == "librarian"
    assert answer.text.startswith(GROUNDED), "what the documents hold streams as written"
    sent = bot.received()
    for invented in ("4,817", "leave.example.com"):
        assert invented not in sent, "never shown, not even in an edit or a stream chunk"
    assert "4,817" not in answer.turn.content and GROUNDED in answer.turn.content
    bot.check_within_limits()


@pytest.mark.parametrize("platform", SHOWN_VARIANTS, indirect=True)
async def test_mass_mentions_in_a_reply_are_defused(start: Start) -> None:
    bot = await start(ScriptedEngine(BAIT))
    answer = await bot.answer(await bot.ask("alice", "Say hello to everyone."))
    assert bot.live_pings(answer.text) == []
    assert "@\u200beveryone" in answer.text and "@\u200bhere" in answer.text, "still readable"
