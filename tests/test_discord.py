"""The Discord adapter, end to end: the real discord.py client against the loopback fake Discord.

Each test starts a fake Discord (REST + gateway on 127.0.0.1), a real app on a tmp project with
the real embedded model (or, where the behaviour needs text the model cannot be made to write,
a real `Engine` that streams a fixed text), and the real adapter; it asserts on what Discord
received. Every test also checks that every outgoing message disabled all mentions.

What Slack must do as well (refusals, ignored payloads, feedback, stop, splitting, defused
mentions, persona edits) is in tests/test_platform_contract.py; this module keeps what is
Discord's own.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bots.adapters.discord.bot import DiscordAdapter
from bots.adapters.discord.client import DiscordSetupError, bot_logins
from bots.adapters.render import CURSOR
from bots.chat import notices
from bots.chat.model import Incoming
from bots.engine.base import Engine
from bots.runtime import Runtime
from bots.serve import configured_adapters
from bots.settings import Settings
from tests.fakes.discord import FakeDiscord
from tests.fakes.discord_env import (
    EDIT_INTERVAL_S,
    FAST_RETRY,
    MODEL_TIMEOUT_S,
    TOKEN,
    StartDiscord,
)
from tests.fakes.engines import ScriptedEngine, TimedEngine
from tests.fakes.projects import persona_md, write

CODE = "```python\n" + "\n".join(f"print('line {i}')" for i in range(120)) + "\n```"
LONG_REPLY = (
    "Here is the whole listing you asked for.\n\n"
    + CODE
    + "\n\n"
    + " ".join(f"word{i}" for i in range(400))
)


# --------------------------------------------------------------------------- talking to it


async def test_mention_streams_a_reply_in_paced_edits(start_discord: StartDiscord) -> None:
    env = await start_discord(**{"model.max_tokens": 16})
    asked = env.say("alice", "general", "Tell me about the sea in three sentences.")
    turn, shown = await env.answer(asked)

    assert len(shown) == 1
    final = shown[0]
    assert final["webhook_id"] and final["author"]["username"] == "Pete"  # the persona, not the bot
    # Stripped on both sides: a reply cut at max_tokens may end in a space, which a reply shown
    # in one message keeps (the stored turn and Slack's views keep it too).
    assert final["content"].strip() == turn.content.strip() and final["content"]
    assert not final["content"].endswith(CURSOR)
    calls = env.fake.calls
    typing = [i for i, c in enumerate(calls) if c.path.endswith("/typing")]
    first_post = next(i for i, c in enumerate(calls) if c.method == "POST" and c.content)
    assert typing and typing[0] < first_post, "typing shows while the prompt is processed"
    edits = env.fake.calls_to("PATCH", rf"/messages/{final['id']}$")
    assert len(edits) >= 2, "the reply grows in several edits"
    assert any(c.content and c.content.endswith(CURSOR) for c in edits)
    assert edits[-1].content == final["content"]


async def test_channel_binding_answers_without_mention(start_discord: StartDiscord) -> None:
    env = await start_discord()
    unbound = env.say("alice", "quiet", "Is anyone here?", mention=False)
    bound = env.say("alice", "library", "How many vacation days do I get?", mention=False)
    turn, shown = await env.answer(bound)

    assert turn.persona_id == "librarian"
    assert shown[0]["author"]["username"] == "Libby"
    assert "-# Sources: vacation.md" in shown[-1]["content"]  # citations: true
    # A mention after the unaddressed message, in its channel: once it is answered, the
    # unaddressed one would have been too.
    _, later = await env.answer(env.say("alice", "quiet", "And now?"))
    assert env.turns_after(unbound["id"]) == []
    assert env.fake.bot_messages(env.channels["quiet"]) == later


async def test_named_persona_and_reply_chain_continue_one_conversation(
    start_discord: StartDiscord,
) -> None:
    env = await start_discord()
    first = env.say("alice", "general", "librarian: how many vacation days do I get?")
    turn, shown = await env.answer(first)
    assert turn.persona_id == "librarian"

    follow = env.say(
        "alice", "general", "And when do they expire?", mention=False, reply_to=shown[0]["id"]
    )
    second, _ = await env.answer(follow)
    assert second.persona_id == "librarian", "a reply continues with the same persona"
    assert second.conversation_id == turn.conversation_id
    roles = [t.role for t in env.app.store.file.turns(turn.conversation_id)]
    assert roles == ["user", "assistant", "user", "assistant"]


async def test_reply_chain_unknown_to_the_store_becomes_history(
    start_discord: StartDiscord,
) -> None:
    engine = ScriptedEngine("Noted.")
    env = await start_discord(engine=engine)
    earlier = env.say("bob", "general", "The ship's parrot is called Polly.", mention=False)
    env.say("alice", "general", "What is the parrot called?", reply_to=earlier["id"])
    await env.fake.wait_for(lambda: engine.requests)

    prompt = [(m.role, m.content) for m in engine.requests[0].messages]
    assert ("user", "The ship's parrot is called Polly.") in prompt
    assert prompt[-1] == ("user", "What is the parrot called?")


async def test_dm_is_answered_and_is_one_conversation(start_discord: StartDiscord) -> None:
    env = await start_discord()
    first = env.say("bob", "dm", "Hello there, who are you?", mention=False)
    turn, shown = await env.answer(first)
    assert not shown[0].get("webhook_id"), "no webhooks in DMs"
    second = env.say("bob", "dm", "What did I just ask?", mention=False)
    turn2, _ = await env.answer(second)
    assert turn2.conversation_id == turn.conversation_id


async def test_thread_from_ask_is_one_conversation(start_discord: StartDiscord) -> None:
    env = await start_discord()
    env.fake.slash(
        env.bot,
        env.users["alice"],
        env.channels["general"],
        "ask",
        [
            {"name": "question", "type": 3, "value": "How long must passwords be?"},
            {"name": "persona", "type": 3, "value": "librarian"},
            {"name": "thread", "type": 5, "value": True},
        ],
    )
    created = await env.fake.wait_for(lambda: env.fake.calls_to("POST", r"/threads$"))
    thread_id = created[0].path.split("/")[-2]
    assert thread_id in env.fake.channels
    first = await env.fake.wait_for(
        lambda: [m for m in env.fake.bot_messages(thread_id) if m.get("webhook_id")],
        MODEL_TIMEOUT_S,
    )
    assert first[0]["author"]["username"] == "Libby"
    assert env.fake.calls_to("POST", r"/webhooks/")[0].query.get("thread_id") == thread_id
    conversation = env.app.store.file.conversation_id("discord", f"thread:{thread_id}")
    await env.fake.wait_for(
        lambda: [t for t in env.app.store.file.history(conversation) if t.role == "assistant"],
        MODEL_TIMEOUT_S,
    )

    follow = env.say("alice", thread_id, "And where do I keep them?", mention=False)
    turn, _ = await env.answer(follow)
    assert turn.persona_id == "librarian"
    assert turn.conversation_id == conversation
    assert [t.role for t in env.app.store.file.turns(conversation)] == [
        "user",
        "assistant",
        "user",
        "assistant",
    ]


# --------------------------------------------------------------------------- slash commands


async def test_ask_command_streams_into_the_interaction_response(
    start_discord: StartDiscord,
) -> None:
    env = await start_discord()
    env.fake.slash(
        env.bot,
        env.users["bob"],
        env.channels["general"],
        "ask",
        [{"name": "question", "type": 3, "value": "What is your favourite ship?"}],
    )
    callback = await env.fake.wait_for(lambda: env.fake.calls_to("POST", r"/callback$"))
    assert callback[0].body["type"] == 5  # deferred: Discord shows "thinking..."
    await env.fake.wait_for(
        lambda: (
            (e := env.fake.calls_to("PATCH", r"/messages/@original$"))
            and not (e[-1].content or "").endswith(CURSOR)
        ),
        MODEL_TIMEOUT_S,
    )
    edits = env.fake.calls_to("PATCH", r"/messages/@original$")
    assert len(edits) >= 2
    final = edits[-1].content or ""
    assert final.startswith("**Pete:** ") and len(final) > len("**Pete:** ")


async def test_persona_list_and_info(start_discord: StartDiscord) -> None:
    env = await start_discord(engine=ScriptedEngine())  # no reply is written here
    env.fake.slash(
        env.bot,
        env.users["bob"],
        env.channels["general"],
        "persona",
        [{"name": "list", "type": 1, "options": []}],
    )
    listed = await env.fake.wait_for(lambda: env.fake.calls_to("POST", r"/callback$"))
    data = listed[0].body["data"]
    assert data["flags"] & 64  # ephemeral
    for name in ("Libby", "Pete", "Vault", "`librarian`"):
        assert name in data["content"]

    env.fake.slash(
        env.bot,
        env.users["bob"],
        env.channels["general"],
        "persona",
        [
            {
                "name": "info",
                "type": 1,
                "options": [{"name": "name", "type": 3, "value": "librarian"}],
            }
        ],
    )
    info = await env.fake.wait_for(lambda: env.fake.calls_to("POST", r"/callback$")[1:])
    embed = info[0].body["data"]["embeds"][0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert embed["title"] == "Libby"
    assert "How many vacation days do I get?" in fields["Suggested questions"]
    assert fields["Knowledge"] == "handbook"

    env.fake.slash(
        env.bot,
        env.users["bob"],
        env.channels["general"],
        "persona",
        [{"name": "info", "type": 1, "options": [{"name": "name", "type": 3, "value": "nobody"}]}],
    )
    missing = await env.fake.wait_for(lambda: env.fake.calls_to("POST", r"/callback$")[2:])
    assert missing[0].body["data"]["content"] == "That persona doesn't exist: try /persona list."


async def test_ask_autocomplete_offers_personas_and_starters(start_discord: StartDiscord) -> None:
    env = await start_discord(engine=ScriptedEngine())  # no reply is written here
    env.fake.slash(
        env.bot,
        env.users["bob"],
        env.channels["general"],
        "ask",
        [
            {"name": "question", "type": 3, "value": "vac", "focused": True},
            {"name": "persona", "type": 3, "value": "librarian"},
        ],
        autocomplete=True,
    )
    answered = await env.fake.wait_for(lambda: env.fake.calls_to("POST", r"/callback$"))
    assert answered[0].body["type"] == 8
    choices = answered[0].body["data"]["choices"]
    assert [c["value"] for c in choices] == ["How many vacation days do I get?"]


async def test_reset_forgets_a_thread_and_explains_elsewhere(start_discord: StartDiscord) -> None:
    env = await start_discord(engine=ScriptedEngine("Once upon a tide..."))
    env.fake.slash(
        env.bot,
        env.users["alice"],
        env.channels["general"],
        "ask",
        [
            {"name": "question", "type": 3, "value": "Tell me a sea story"},
            {"name": "thread", "type": 5, "value": True},
        ],
    )
    created = await env.fake.wait_for(lambda: env.fake.calls_to("POST", r"/threads$"))
    thread_id = created[0].path.split("/")[-2]
    conversation = env.app.store.file.conversation_id("discord", f"thread:{thread_id}")
    await env.fake.wait_for(
        lambda: [t for t in env.app.store.file.history(conversation) if t.role == "assistant"],
        MODEL_TIMEOUT_S,
    )

    env.fake.slash(env.bot, env.users["alice"], thread_id, "reset")
    await env.fake.wait_for(lambda: len(env.fake.calls_to("POST", r"/callback$")) == 2)
    assert env.app.store.file.history(conversation) == []
    env.fake.slash(env.bot, env.users["alice"], env.channels["general"], "reset")
    done = await env.fake.wait_for(lambda: env.fake.calls_to("POST", r"/callback$")[2:])
    assert "reply chain" in done[0].body["data"]["content"]


# --------------------------------------------------------------------------- rendering


async def test_plain_messages_without_manage_webhooks(start_discord: StartDiscord) -> None:
    env = await start_discord(
        engine=ScriptedEngine("Pete."), fake_options={"manage_webhooks": False}
    )
    asked = env.say("alice", "general", "Who are you?")
    _, shown = await env.answer(asked)
    assert not shown[0].get("webhook_id")
    assert shown[0]["content"].startswith("**Pete:** ")
    assert shown[0]["message_reference"]["message_id"] == asked["id"]
    assert not env.fake.calls_to("POST", r"/webhooks")


async def test_greeting_mass_mentions_are_defused(
    start_discord: StartDiscord, project: Path
) -> None:
    env = await start_discord(engine=ScriptedEngine("unused"))
    write(
        project / "personas" / "pirate" / "persona.md",
        persona_md("You are a pirate.", name="Pete", greeting='"Ahoy @everyone and @here!"'),
    )
    env.app.registry.reload("pirate")  # or the watcher did: either way it is the new file now
    assert env.app.registry.personas() and env.app.service.persona("pirate").greeting
    greeted = env.say("alice", "general", "pirate:")
    (greeting,) = await env.fake.wait_for(
        lambda: [
            m
            for m in env.fake.messages.values()
            if m.get("message_reference", {}).get("message_id") == greeted["id"]
        ]
    )
    assert "@everyone" not in greeting["content"] and "@here" not in greeting["content"]
    assert greeting["content"].startswith("Ahoy @\u200beveryone")


async def test_small_text_attachments_are_read_others_ignored(start_discord: StartDiscord) -> None:
    engine = ScriptedEngine("Read it.")
    env = await start_discord(engine=engine)
    env.say(
        "alice",
        "general",
        "Summarise the notes.",
        attachments=[
            ("notes.txt", "text/plain", b"The treasure is under the palm tree."),
            ("photo.png", "image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * 100),
            ("big.txt", "text/plain", b"x" * 100_000),
        ],
    )
    await env.fake.wait_for(lambda: engine.requests)
    question = engine.requests[0].messages[-1].content
    assert "[notes.txt]" in question and "under the palm tree" in question
    assert "photo.png" not in question and "big.txt" not in question


# --------------------------------------------------------------------------- safety


async def test_access_lists_let_a_role_in(start_discord: StartDiscord) -> None:
    # Users named in `access` and refusals: tests/test_platform_contract.py.
    env = await start_discord(engine=ScriptedEngine("The vault is open."))
    by_role = env.say("carol", "general", "vault: open up")
    turn, _ = await env.answer(by_role)
    assert turn.persona_id == "vault"


# --------------------------------------------------------------------------- robustness


async def test_gateway_drop_and_resume_mid_reply_loses_nothing(
    start_discord: StartDiscord,
) -> None:
    env = await start_discord(
        engine=ScriptedEngine(LONG_REPLY[:1500], piece_chars=30, delay_s=0.01)
    )
    first = env.say("alice", "general", "Tell me everything.")
    await env.fake.wait_for(lambda: env.fake.replies_to(first["id"]))
    seq_of_first = env.fake.seq_of(env.bot, lambda e, d: d.get("id") == first["id"])
    await env.fake.drop(env.bot, replay_from=seq_of_first - 1)
    during = env.say("bob", "general", "Are you still there?")  # queued while disconnected

    _, shown = await env.answer(first)
    await env.answer(during)
    assert env.bot.resumes == 1 and env.bot.identifies == 1
    assert "".join(m["content"] for m in shown).split() == LONG_REPLY[:1500].split()
    # `during` came after the replayed events: its answer means the replay was handled.
    answers_to_first = [t for t in env.turns_after(first["id"]) if t.role == "assistant"]
    assert len(answers_to_first) == 1, "the replayed message was answered once"


async def test_replayed_message_is_answered_once_across_a_restart(
    start_discord: StartDiscord, project: Path, settings_for: Callable[..., Settings]
) -> None:
    engine = ScriptedEngine("Once.")
    env = await start_discord(engine=engine)
    asked = env.say("alice", "general", "Answer me once.")
    await env.answer(asked)
    await env.adapter.stop()
    await env.app.close()

    app = Runtime.create(env.app.settings, engine=engine)
    await app.start()
    adapter = DiscordAdapter(
        app.service, app.adapters, guild_ready_timeout_s=0.05, retry=FAST_RETRY
    )
    await adapter.start()
    env.app, env.adapter = app, adapter
    replay = {**env.fake.messages[asked["id"]], "guild_id": env.fake.guild_id}
    env.fake.dispatch("MESSAGE_CREATE", replay)
    fresh = env.say("alice", "general", "And a new question.")
    await env.answer(fresh)
    assert len(engine.requests) == 2
    assert env.bot.identifies == 2


async def test_rate_limited_rest_calls_are_waited_out(start_discord: StartDiscord) -> None:
    env = await start_discord(engine=ScriptedEngine(LONG_REPLY[:600], piece_chars=20, delay_s=0.01))
    env.fake.fail("POST", r"^/webhooks/\d+/\w+$", 429, times=1, retry_after=0.3)
    env.fake.fail("PATCH", r"^/webhooks/\d+/\w+/messages/", 429, times=2, retry_after=0.2)
    asked = env.say("alice", "general", "Long answer please.")
    _, shown = await env.answer(asked)
    limited = [c for c in env.fake.calls if c.status == 429]
    assert len(limited) == 3
    assert len(shown) == 1 and shown[0]["content"].split() == LONG_REPLY[:600].split()


async def test_discord_outage_delays_but_never_drops_a_reply(start_discord: StartDiscord) -> None:
    env = await start_discord(engine=ScriptedEngine("Still here after the storm."))
    env.fake.cut("POST", r"^/webhooks/\d+/\w+$", times=2)
    env.fake.cut("PATCH", r"^/webhooks/", times=2)
    asked = env.say("alice", "general", "Are you there?")
    _, shown = await env.answer(asked)
    assert shown[0]["content"] == "Still here after the storm."
    assert len([c for c in env.fake.calls if c.status == 599]) == 4


async def test_a_lost_response_does_not_duplicate_the_message(
    start_discord: StartDiscord,
) -> None:
    env = await start_discord(
        engine=ScriptedEngine("Exactly once."), fake_options={"manage_webhooks": False}
    )
    env.fake.fail("POST", r"^/channels/\d+/messages$", 503, times=1)
    env.fake.cut("POST", r"^/channels/\d+/messages$", times=1, after_processing=True)
    asked = env.say("alice", "general", "Say it once.")
    _, shown = await env.answer(asked)
    assert len(shown) == 1 and shown[0]["content"] == "**Pete:** Exactly once."
    posts = env.fake.calls_to("POST", r"^/channels/\d+/messages$")
    assert [c.status for c in posts] == [503, 599, 200], "retried with the same nonce"
    assert len({c.body["nonce"] for c in posts}) == 1


@pytest.mark.parametrize("change", ["edit", "delete"])
async def test_edit_or_delete_before_the_reply_starts_cancels_it(
    start_discord: StartDiscord, change: str
) -> None:
    gate = asyncio.Event()
    engine = ScriptedEngine("Too late.", gate=gate)
    env = await start_discord(engine=engine)
    asked = env.say("alice", "general", "Wait for it.")
    await env.fake.wait_for(lambda: engine.requests)
    if change == "edit":
        env.fake.edit_user_message(asked["id"], f"<@{env.bot.id}> Never mind.")
    else:
        env.fake.delete_user_message(asked["id"])
    await env.fake.wait_for(lambda: engine.cancelled)
    gate.set()
    _, shown = await env.answer(env.say("alice", "general", "And this one?"))
    assert shown[0]["content"] == "Too late."
    assert len(env.sent_messages()) == 1, "nothing was posted for the withdrawn question"


async def test_a_question_deleted_while_it_waits_in_line_takes_its_place_back(
    start_discord: StartDiscord,
) -> None:
    turns = asyncio.Semaphore(0)
    engine = ScriptedEngine("In turn.", parallel=1, turns=turns)
    env = await start_discord(engine=engine)
    general = env.channels["general"]
    first = env.say("alice", "general", "First?")
    await env.fake.wait_for(lambda: engine.running == 1)
    waiting = env.say("bob", "general", "Second?")
    (place,) = await env.fake.wait_for(
        lambda: [m for m in env.fake.bot_messages(general) if notices.ahead(1) in m["content"]]
    )
    env.fake.delete_user_message(waiting["id"])
    await env.fake.wait_for(lambda: place["id"] not in env.fake.messages)
    turns.release()
    _, shown = await env.answer(first)
    turns.release()
    _, after = await env.answer(env.say("carol", "general", "And this one?"))
    assert engine.asked("Second?") == 1 and engine.cancelled == 0, "withdrawn before it started"
    assert [m["id"] for m in env.fake.bot_messages(general)] == [shown[0]["id"], after[0]["id"]]
    assert after[0]["content"] == shown[0]["content"], "nothing left of the withdrawn question"


# --------------------------------------------------------------------------- concurrency, reload


async def test_two_personas_in_two_channels_at_once(start_discord: StartDiscord) -> None:
    env = await start_discord(**{"model.max_tokens": 16})
    cove = env.say("alice", "cove", "What do you love most?", mention=False)
    library = env.say("bob", "library", "How long must passwords be?", mention=False)
    (pirate, pirate_shown), (librarian, library_shown) = await asyncio.gather(
        env.answer(cove), env.answer(library)
    )
    assert (pirate.persona_id, librarian.persona_id) == ("pirate", "librarian")
    assert pirate_shown[0]["author"]["username"] == "Pete"
    assert library_shown[0]["author"]["username"] == "Libby"
    assert pirate_shown[0]["channel_id"] == env.channels["cove"]
    assert library_shown[0]["channel_id"] == env.channels["library"]


async def test_a_persona_with_its_own_bot_answers_as_itself(start_discord: StartDiscord) -> None:
    engine = ScriptedEngine("Shh, this is a library.")
    env = await start_discord(engine=engine, persona_bots=("librarian",))
    libby = env.persona_bots["librarian"]

    bound = env.say("alice", "library", "Anything on vacation days?", mention=False)
    mentioned = env.say("alice", "general", "vacation days?", to=libby)
    direct = env.say("bob", "dm", "vacation days?", mention=False, to=libby)
    main = env.say("alice", "general", "Ahoy?")
    answers = [await env.answer(m) for m in (bound, mentioned, direct, main)]

    for turn, shown in answers[:3]:
        assert turn.persona_id == "librarian"
        assert shown[0]["author"]["id"] == libby.id and not shown[0].get("webhook_id")
        assert not shown[0]["content"].startswith("**"), "the bot is the persona: no name prefix"
    turn, shown = answers[3]
    assert turn.persona_id == "pirate" and shown[0]["author"]["username"] == "Pete"
    await env.answer(env.say("bob", "general", "And vacation days?", to=libby))
    assert len(engine.requests) == 5, "each message answered once, by one bot"
    assert libby.commands == [] and env.bot.commands, "commands belong to the main bot"


# --------------------------------------------------------------------------- latency


async def test_adapter_adds_almost_no_latency(start_discord: StartDiscord) -> None:
    """MESSAGE_CREATE -> first visible text and -> final message, against the same request made
    straight to the chat service (what `bots ask` does), in the same run, in alternating order
    (the engine caches prompt prefixes, which favours whichever goes second). The assertions are
    on the adapter's own share, timed around the engine within each Discord reply."""
    timed: list[TimedEngine] = []

    def wrap(engine: Engine) -> Engine:
        timed.append(TimedEngine(engine))
        return timed[0]

    env = await start_discord(wrap_engine=wrap, **{"model.max_tokens": 12, "model.temperature": 0})
    engine = timed[0]
    results: dict[str, list[float]] = {
        k: []
        for k in (
            "direct_first",
            "direct_final",
            "discord_first",
            "discord_final",
            "to_engine",
            "piece_to_visible",
            "last_piece_to_final",
        )
    }

    async def direct(question: str) -> None:
        started = time.monotonic()
        reply = await env.app.service.start(
            Incoming("cli", "", "cli", question, "pirate", remember=False)
        )
        first = 0.0
        async for _ in reply:
            first = first or time.monotonic() - started
        results["direct_first"].append(first)
        results["direct_final"].append(time.monotonic() - started)

    async def via_discord(question: str) -> None:
        sent = time.monotonic()
        asked = env.say("alice", "general", question)
        _, shown = await env.answer(asked)
        timing = engine.timings[-1]
        posts = [c for c in env.fake.calls if c.at >= sent and c.content and c.status < 300]
        edits = env.fake.calls_to("PATCH", rf"/messages/{shown[-1]['id']}$")
        final = edits[-1].at if edits else posts[-1].at
        results["discord_first"].append(posts[0].at - sent)
        results["discord_final"].append(final - sent)
        results["to_engine"].append(timing.requested - sent)
        results["piece_to_visible"].append(posts[0].at - timing.first)
        results["last_piece_to_final"].append(final - timing.last)

    await via_discord("Say ahoy.")  # warm-up: the persona webhook is made once per channel
    for results_list in results.values():
        results_list.clear()
    for run in range(4):
        question = f"Name a famous ship, number {run}."
        first, second = (direct, via_discord) if run % 2 else (via_discord, direct)
        await first(question)
        await second(question)

    medians = {k: round(statistics.median(v) * 1000) for k, v in results.items()}
    print("\ndiscord latency, median ms of 4:", medians)
    # The adapter's own work around the engine is milliseconds; bounds allow a busy 2-core box.
    assert medians["to_engine"] < 300
    assert medians["piece_to_visible"] < 300
    assert medians["last_piece_to_final"] < 300 + EDIT_INTERVAL_S * 1000


async def test_the_token_never_reaches_the_log(
    start_discord: StartDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    env = await start_discord(engine=ScriptedEngine("Quiet."))
    await env.answer(env.say("alice", "general", "Hello?"))
    await env.adapter.stop()
    assert caplog.records
    assert not [r for r in caplog.records if TOKEN in r.getMessage()]


# --------------------------------------------------------------------------- setup


async def test_setup_errors_name_what_to_fix(
    project: Path, settings_for: Callable[..., Settings]
) -> None:
    fake = FakeDiscord(content_intent_granted=False)
    fake.add_bot(TOKEN)
    await fake.start()
    urls = {"discord.api_url": fake.api_url, "discord.gateway_url": fake.gateway_url}
    try:
        for token, complaint in (("not-the-token", "DISCORD_TOKEN"), (TOKEN, "Message Content")):
            app = Runtime.create(
                settings_for(project, **{"discord.token": token, **urls}), engine=ScriptedEngine()
            )
            adapter = DiscordAdapter(app.service, app.adapters, guild_ready_timeout_s=0.05)
            with pytest.raises(DiscordSetupError, match=complaint) as error:
                await adapter.start()
            assert token not in str(error.value)
            await adapter.stop()
            await app.close()
    finally:
        await fake.close()


def test_serve_starts_discord_only_with_a_token(
    project: Path, settings_for: Callable[..., Settings]
) -> None:
    without = Runtime.create(settings_for(project), engine=ScriptedEngine())
    with_token = Runtime.create(
        settings_for(project, **{"discord.token": TOKEN}), engine=ScriptedEngine()
    )
    try:
        assert [a.name for a in configured_adapters(without)] == []
        assert [a.name for a in configured_adapters(with_token)] == ["discord"]
    finally:
        without.store.file.close()
        with_token.store.file.close()


def test_persona_tokens_are_persona_equals_token() -> None:
    logins = bot_logins(TOKEN, ("tutor = abc.def", "pirate=xyz"))
    assert [(b.persona_id, b.token) for b in logins] == [
        (None, TOKEN),
        ("tutor", "abc.def"),
        ("pirate", "xyz"),
    ]
    with pytest.raises(DiscordSetupError, match="entry 1: write it as PERSONA=TOKEN") as error:
        bot_logins(TOKEN, ("just-a-token",))
    assert "just-a-token" not in str(error.value)
    with pytest.raises(DiscordSetupError, match="DISCORD_TOKEN is not set"):
        bot_logins("", ())
