"""The Slack adapter end to end: the real slack-bolt app and the real embedded model against a
loopback fake Slack (tests/fakes/slack.py), in HTTP Events mode and in Socket Mode.

One app (model loaded once, the `bot` fixture in tests/conftest.py) serves the whole module; each
test gets a fresh fake Slack and a fresh adapter, and uses its own channels or threads.

What Discord must do as well (refusals, ignored payloads, feedback, stop, splitting, defused
mentions, persona edits) is in tests/test_platform_contract.py; this module keeps what is
Slack's own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bots.adapters.render import CURSOR
from bots.adapters.slack.app import SlackAdapter, SlackConfigError
from bots.adapters.slack.format import neutralise_markdown, to_mrkdwn
from bots.adapters.slack.reply import PLACEHOLDER
from bots.chat import notices
from bots.chat.model import Incoming
from bots.runtime import Runtime
from bots.settings import Settings, SlackSettings
from tests.fakes.engines import ScriptedEngine
from tests.fakes.platforms import start_slack_driver
from tests.fakes.slack import (
    APP_TOKEN,
    BOT_TOKEN,
    BOT_USER,
    CHANNEL,
    DM,
    TEAM,
    USER,
    FakeSlack,
)
from tests.fakes.slack_env import (
    ALLOWED_USER,
    BOUND,
    SlackStarts,
    Starter,
    answered,
    events_url,
    shown_text,
)
from tests.fakes.waiting import until

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def answer_lookout(bot: Runtime, fake: FakeSlack, url: str = "") -> str:
    """Mention the lookout (a two-token persona) in CHANNEL, over HTTP at `url` or else Socket
    Mode, and wait for its answer; the thread's ts. Sent after messages that must get no reply:
    once it is answered, they would have been."""
    event = fake.user_message("lookout: anything out there?", mention=True)
    if url:
        status, _, _ = await fake.post_event(url, event)
        assert status == 200
    else:
        await fake.deliver_event(event)
    await answered(bot, CHANNEL, event["ts"])
    return str(event["ts"])


def _texts(args: dict[str, Any]) -> list[str]:
    return [v for v in args.values() if isinstance(v, str)]


# ---- replies ----


async def test_app_mention_gets_a_threaded_reply_edited_as_it_streams(
    bot: Runtime, fake: FakeSlack, start_bot: Starter
) -> None:
    adapter = await start_bot(fake, "http")
    event = fake.user_message("pirate: tell me about your ship", mention=True)
    status, _, took = await fake.post_event(events_url(adapter), event)
    assert status == 200 and took < 3

    turn = await answered(bot, CHANNEL, event["ts"])
    replies = fake.bot_messages(CHANNEL, event["ts"])
    assert len(replies) == 1
    reply = replies[0]
    assert reply.username == "Pete"
    assert reply.text == to_mrkdwn(turn.content) and CURSOR.strip() not in reply.text
    updates = [c for c in fake.calls_to("chat.update") if c.args["ts"] == reply.ts]
    assert len(updates) >= 3, "the reply is edited progressively"
    assert fake.calls_to("chat.postMessage")[0].args["text"] == PLACEHOLDER
    assert turn.platform_message_id == f"{CHANNEL}:{reply.ts}"
    assert bot.adapters["slack"] == "connected"


async def test_streaming_api_is_used_where_slack_offers_it(
    bot: Runtime, start_bot: Starter, slack: SlackStarts
) -> None:
    server = await slack.fake(streaming=True)
    await start_bot(server, "socket")
    event = server.user_message("pirate: what do you eat?", mention=True)
    envelope = await server.deliver_event(event)
    await asyncio.wait_for(envelope.acked.wait(), 3)
    turn = await answered(bot, CHANNEL, event["ts"])
    start = server.calls_to("chat.startStream")
    assert len(start) == 1
    assert start[0].args["thread_ts"] == event["ts"]
    assert start[0].args["recipient_user_id"] == USER
    assert start[0].args["recipient_team_id"] == TEAM
    assert start[0].args["username"] == "Pete"
    assert server.calls_to("chat.appendStream") and server.calls_to("chat.stopStream")
    assert not server.calls_to("chat.update")
    (message,) = server.bot_messages(CHANNEL, event["ts"])
    assert message.stream == "completed"
    assert message.text == neutralise_markdown(turn.content)


async def test_streaming_refused_falls_back_to_edits(
    bot: Runtime, fake: FakeSlack, start_bot: Starter
) -> None:
    adapter = await start_bot(fake, "http")
    adapter.streaming = True  # the fake answers chat.startStream with unknown_method
    event = fake.user_message("pirate: hello there", mention=True)
    await fake.post_event(events_url(adapter), event)
    turn = await answered(bot, CHANNEL, event["ts"])
    assert fake.calls_to("chat.startStream")
    assert shown_text(fake, CHANNEL, event["ts"]) == to_mrkdwn(turn.content)
    assert adapter.streaming is False, "streaming is not tried again"


async def test_expired_stream_goes_on_with_edits_in_the_same_message(
    bot: Runtime, start_bot: Starter, slack: SlackStarts
) -> None:
    server = await slack.fake(streaming=True, stream_expires_after=1)
    adapter = await start_bot(server, "http")
    event = server.user_message("pirate: tell me about the wind", mention=True)
    await server.post_event(events_url(adapter), event)
    turn = await answered(bot, CHANNEL, event["ts"])
    (message,) = server.bot_messages(CHANNEL, event["ts"])
    assert server.calls_to("chat.startStream") and server.calls_to("chat.update")
    assert message.text == to_mrkdwn(turn.content)
    assert turn.platform_message_id == f"{CHANNEL}:{message.ts}"
    assert adapter.streaming, "an expired stream is no reason to stop streaming"


async def test_direct_message_is_answered_without_a_mention(
    bot: Runtime, fake: FakeSlack, start_bot: Starter
) -> None:
    await start_bot(fake, "socket")
    event = fake.user_message("what is the sea like?", channel=DM)
    await fake.deliver_event(event)
    turn = await answered(bot, DM, event["ts"])
    assert turn.persona_id == "pirate"  # the default persona
    assert shown_text(fake, DM, event["ts"]) == to_mrkdwn(turn.content)


async def test_bound_channel_answers_every_message_and_other_channels_only_mentions(
    bot: Runtime, fake: FakeSlack, start_bot: Starter
) -> None:
    adapter = await start_bot(fake, "http")
    unbound = fake.user_message("just chatting with colleagues")
    bound = fake.user_message("how do I coil a rope?", channel=BOUND)
    await fake.post_event(events_url(adapter), unbound)
    await fake.post_event(events_url(adapter), bound)
    turn = await answered(bot, BOUND, bound["ts"])
    assert turn.persona_id == "deckhand"
    (reply,) = fake.bot_messages(BOUND)
    assert reply.username == "Dex" and reply.thread_ts == bound["ts"]
    later = await answer_lookout(bot, fake, events_url(adapter))
    assert [m.thread_ts for m in fake.bot_messages(CHANNEL)] == [later], "only the mention"


async def test_thread_continues_with_history_from_the_store(
    bot: Runtime, fake: FakeSlack, start_bot: Starter
) -> None:
    adapter = await start_bot(fake, "http")
    first = fake.user_message("librarian: how many vacation days do I get?", mention=True)
    await fake.post_event(events_url(adapter), first)
    reply = await answered(bot, CHANNEL, first["ts"])
    assert reply.persona_id == "librarian"
    # A plain message in the bot's thread: answered by the thread's persona, with its history.
    follow = fake.user_message("and when do unused days expire?", thread_ts=first["ts"])
    await fake.post_event(events_url(adapter), follow)
    second = await answered(bot, CHANNEL, first["ts"], count=2)
    assert second.persona_id == "librarian"
    conversation = bot.store.file.conversation_id("slack", f"{CHANNEL}:{first['ts']}")
    roles = [t.role for t in bot.store.file.turns(conversation)]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert not fake.calls_to("conversations.replies")
    replies = fake.bot_messages(CHANNEL, first["ts"])
    assert len(replies) == 2 and all(m.username == "Libby" for m in replies)


async def test_mention_inside_a_people_thread_reads_the_thread_once(
    bot: Runtime, fake: FakeSlack, start_bot: Starter
) -> None:
    adapter = await start_bot(fake, "http")
    root = fake.user_message("who has the keys to the boat?", user="U0OTHER01")
    fake.user_message("I think Sam has them", user="U0OTHER02", thread_ts=root["ts"])
    ask = fake.user_message("pirate: who has the keys?", mention=True, thread_ts=root["ts"])
    await fake.post_event(events_url(adapter), ask)
    await answered(bot, CHANNEL, root["ts"])
    (call,) = fake.calls_to("conversations.replies")
    assert call.args["channel"] == CHANNEL and call.args["ts"] == root["ts"]
    # The bot is now part of the thread: a plain follow-up is answered from the store.
    follow = fake.user_message("thanks, and the oars?", thread_ts=root["ts"])
    await fake.post_event(events_url(adapter), follow)
    await answered(bot, CHANNEL, root["ts"], count=2)
    assert len(fake.calls_to("conversations.replies")) == 1


async def test_citations_show_sources_in_a_context_block(
    bot: Runtime, fake: FakeSlack, start_bot: Starter
) -> None:
    adapter = await start_bot(fake, "http")
    event = fake.user_message("librarian: how many vacation days do I get per year?", mention=True)
    await fake.post_event(events_url(adapter), event)
    turn = await answered(bot, CHANNEL, event["ts"])
    assert turn.sources
    (message,) = fake.bot_messages(CHANNEL, event["ts"])
    context = [b for b in message.blocks if b["type"] == "context"]
    assert context and "Vacation" in context[0]["elements"][0]["text"]
    sections = [b["text"]["text"] for b in message.blocks if b["type"] == "section"]
    assert "".join(sections) == to_mrkdwn(turn.content)


async def test_ask_is_acknowledged_within_3_seconds_and_answered_in_a_thread(
    bot: Runtime, fake: FakeSlack, start_bot: Starter
) -> None:
    adapter = await start_bot(fake, "http")
    fields = fake.command("/ask", "pirate where is the treasure?")
    status, _, took = await fake.post_command(events_url(adapter), fields)
    assert status == 200 and took < 3
    question = await fake.wait_for(
        lambda: [m for m in fake.bot_messages(CHANNEL) if not m.thread_ts]
    )
    assert "where is the treasure?" in question[0].text and question[0].username == "Pete"
    turn = await answered(bot, CHANNEL, question[0].ts)
    assert shown_text(fake, CHANNEL, question[0].ts) == to_mrkdwn(turn.content)


async def test_ask_where_the_bot_is_not_a_member_is_answered_privately(
    bot: Runtime, fake: FakeSlack, start_bot: Starter
) -> None:
    adapter = await start_bot(fake, "http")
    fake.outside.add("C0OUTSIDE")
    fields = fake.command("/ask", "pirate: where do you sleep?", channel="C0OUTSIDE")
    status, _, took = await fake.post_command(events_url(adapter), fields)
    assert status == 200 and took < 3
    (answer,) = await fake.wait_for(lambda: fake.responses)
    conversation = bot.store.file.conversation_id("slack", f"C0OUTSIDE:/ask:{USER}")
    (turn,) = [t for t in bot.store.file.turns(conversation) if t.role == "assistant"]
    assert answer["text"] == to_mrkdwn(turn.content)


async def test_a_private_ask_waiting_in_line_shows_its_place_then_the_answer(
    project: Path, settings_for: Callable[..., Settings], slack: SlackStarts
) -> None:
    turns = asyncio.Semaphore(0)
    engine = ScriptedEngine("Aye, in turn.", parallel=1, turns=turns)
    driver = await start_slack_driver(slack, project, settings_for, engine)
    fake = driver.fake
    await driver.ask("alice", "First?")
    await until(lambda: engine.running == 1, what="the first reply holds the model")
    fake.outside.add("C0OUTSIDE")
    fields = fake.command("/ask", "pirate: where do you sleep?", channel="C0OUTSIDE")
    status, _, _ = await fake.post_command(driver.url, fields)
    assert status == 200
    (place,) = await fake.wait_for(lambda: fake.responses)
    assert place["text"] == notices.ahead(1) and not place.get("replace_original")
    turns.release()
    turns.release()
    _, answer = await fake.wait_for(lambda: fake.responses[1:] and fake.responses)
    assert answer["text"] == "Aye, in turn." and answer["replace_original"] is True
    assert len(fake.responses) == 2, "the answer replaced the place in line"


async def test_ask_over_socket_mode_and_persona_commands(
    bot: Runtime, fake: FakeSlack, start_bot: Starter
) -> None:
    await start_bot(fake, "socket")
    listing = await fake.deliver(fake.command("/persona", "list"), "slash_commands")
    await asyncio.wait_for(listing.acked.wait(), 3)
    assert listing.ack_payload is not None
    for name in ("Libby", "Pete", "Dex", "Vault"):
        assert name in listing.ack_payload["text"]
    info = await fake.deliver(fake.command("/persona", "info librarian"), "slash_commands")
    await asyncio.wait_for(info.acked.wait(), 3)
    assert info.ack_payload is not None and "handbook" in info.ack_payload["text"]
    ask = await fake.deliver(fake.command("/ask", ""), "slash_commands")
    await asyncio.wait_for(ask.acked.wait(), 3)
    usage = await fake.wait_for(lambda: fake.responses)
    assert "Usage" in usage[0]["text"]


async def test_app_home_lists_personas_with_descriptions_and_starters(
    bot: Runtime, fake: FakeSlack, start_bot: Starter
) -> None:
    await start_bot(fake, "socket")
    event = {
        "type": "app_home_opened",
        "user": USER,
        "channel": DM,
        "tab": "home",
        "event_ts": fake.new_ts(),
    }
    await fake.deliver_event(event)
    (published,) = await fake.wait_for(lambda: fake.views)
    assert published["user_id"] == USER
    text = json.dumps(published["view"])
    assert published["view"]["type"] == "home"
    for expected in ("Libby", "Answers from the handbook.", "How many vacation days?", "Pete"):
        assert expected in text


# ---- safety ----


async def test_greeting_mentions_and_broadcasts_are_neutralised(
    bot: Runtime, fake: FakeSlack, start_bot: Starter
) -> None:
    adapter = await start_bot(fake, "http")
    event = fake.user_message("vault:", mention=True, user=ALLOWED_USER)
    await fake.post_event(events_url(adapter), event)
    (greeting,) = await fake.wait_for(lambda: fake.bot_messages(CHANNEL, event["ts"]))
    assert "<!channel>" not in greeting.text and "<@U0SOMEONE>" not in greeting.text
    assert "@here" not in greeting.text and "&lt;!channel&gt;" in greeting.text
    assert "*welcome*" in greeting.text


async def test_bad_signature_and_replayed_timestamp_are_rejected_without_effect(
    bot: Runtime, fake: FakeSlack, start_bot: Starter
) -> None:
    adapter = await start_bot(fake, "http")
    url = events_url(adapter)
    before = len(fake.calls)
    forged = fake.user_message("pirate: forged", mention=True)
    status, _, _ = await fake.post_event(url, forged, secret="not-the-secret")
    assert status == 401
    replayed = fake.user_message("pirate: replayed", mention=True)
    status, _, _ = await fake.post_event(url, replayed, timestamp=int(time.time()) - 6 * 60)
    assert status == 401
    garbled = fake.user_message("pirate: garbled", mention=True)
    status, _, _ = await fake.post_event(url, garbled, signature="v0=" + "0" * 64)
    assert status == 401
    later = await answer_lookout(bot, fake, url)
    assert [m.thread_ts for m in fake.bot_messages()] == [later]
    rejected = {forged["ts"], replayed["ts"], garbled["ts"]}
    touched = [c for c in fake.calls[before:] if rejected & set(_texts(c.args))]
    assert touched == [], "no Web API call for a rejected event"


async def test_url_verification_challenge_is_echoed(
    bot: Runtime, fake: FakeSlack, start_bot: Starter
) -> None:
    adapter = await start_bot(fake, "http")
    body = {
        "token": "verification-token",
        "challenge": "c0ffee-challenge",
        "type": "url_verification",
    }
    status, text, _ = await fake.post_signed(events_url(adapter), json.dumps(body))
    assert status == 200 and "c0ffee-challenge" in text


async def test_retries_and_the_mention_message_twin_get_one_reply_even_across_a_restart(
    bot: Runtime, fake: FakeSlack, start_bot: Starter
) -> None:
    adapter = await start_bot(fake, "http")
    event = fake.user_message("pirate: how are you?", mention=True)
    await fake.post_event(events_url(adapter), event, event_id="Ev0RETRY01")
    await fake.post_event(events_url(adapter), event, event_id="Ev0RETRY01", retry_num=1)
    await fake.post_event(events_url(adapter), fake.twin(event), event_id="Ev0TWIN001")
    await answered(bot, CHANNEL, event["ts"])
    await adapter.stop()
    restarted = await start_bot(fake, "http")
    await fake.post_event(events_url(restarted), event, event_id="Ev0RETRY01", retry_num=2)
    await answer_lookout(bot, fake, events_url(restarted))
    assert len(fake.bot_messages(CHANNEL, event["ts"])) == 1
    assert len(fake.calls_to("chat.postMessage")) == 2, "one for it, one for the later message"


async def test_rate_limited_web_api_calls_are_waited_out_and_nothing_is_dropped(
    bot: Runtime, fake: FakeSlack, start_bot: Starter
) -> None:
    adapter = await start_bot(fake, "http")
    fake.rate_limit("chat.update", times=2, retry_after_s=1)
    event = fake.user_message("pirate: sing me a short song", mention=True)
    await fake.post_event(events_url(adapter), event)
    turn = await answered(bot, CHANNEL, event["ts"])
    assert shown_text(fake, CHANNEL, event["ts"]) == to_mrkdwn(turn.content)
    updates = fake.calls_to("chat.update")
    assert len(updates) >= 3
    gap = max(b.at - a.at for a, b in itertools.pairwise(updates))
    assert gap >= 0.9, "the adapter waited for Retry-After"


async def test_missing_customize_scope_falls_back_to_the_app_name(
    bot: Runtime, start_bot: Starter, slack: SlackStarts
) -> None:
    server = await slack.fake(customize=False)
    adapter = await start_bot(server, "http")
    event = server.user_message("pirate: ahoy", mention=True)
    await server.post_event(events_url(adapter), event)
    turn = await answered(bot, CHANNEL, event["ts"])
    (reply,) = server.bot_messages(CHANNEL, event["ts"])
    assert reply.username == "" and reply.text == to_mrkdwn(turn.content)


async def test_socket_mode_reconnects_mid_reply_without_losing_or_repeating(
    bot: Runtime, fake: FakeSlack, start_bot: Starter
) -> None:
    adapter = await start_bot(fake, "socket")
    first = fake.user_message("pirate: tell me a long tale", mention=True)
    delivered = await fake.deliver_event(first)
    await asyncio.wait_for(delivered.acked.wait(), 3)
    # Mid-reply: Slack asks for a reconnect, then the new connection is cut without warning.
    await fake.wait_for(lambda: fake.calls_to("chat.update"))
    await fake.ask_to_reconnect()
    await fake.wait_for(lambda: fake.connections >= 2, timeout=10)
    await fake.drop()
    # Sent while disconnected: Slack keeps it and delivers it on the next connection.
    second = fake.user_message("pirate: are you still there?", mention=True)
    pending = await fake.deliver_event(second)
    await fake.wait_for(lambda: fake.connections >= 3, timeout=15)
    await asyncio.wait_for(pending.acked.wait(), 10)
    assert pending.retry_attempt >= 1
    # Slack retries the first event too, as if its ack had been lost.
    await fake.deliver(delivered.payload, retry_of=delivered.envelope_id)
    first_turn = await answered(bot, CHANNEL, first["ts"])
    second_turn = await answered(bot, CHANNEL, second["ts"])
    later = await answer_lookout(bot, fake)
    assert shown_text(fake, CHANNEL, first["ts"]) == to_mrkdwn(first_turn.content)
    assert shown_text(fake, CHANNEL, second["ts"]) == to_mrkdwn(second_turn.content)
    threads = sorted(m.thread_ts for m in fake.bot_messages(CHANNEL))
    assert threads == sorted([first["ts"], second["ts"], later]), "one reply per message"
    assert bot.adapters["slack"] == "connected"
    assert adapter.bot_user_id == BOT_USER


async def test_incomplete_credentials_are_refused_with_the_setting_named(bot: Runtime) -> None:
    with pytest.raises(SlackConfigError, match="SLACK_APP_TOKEN"):
        SlackAdapter(bot.service, bot.adapters, settings=SlackSettings(bot_token=BOT_TOKEN))
    with pytest.raises(SlackConfigError, match="SLACK_BOT_TOKEN"):
        SlackAdapter(
            bot.service,
            bot.adapters,
            settings=SlackSettings(bot_token="xoxp-user", app_token=APP_TOKEN),
        )


# ---- measurement ----


async def test_latency_compared_with_a_direct_answer(
    bot: Runtime, start_bot: Starter, slack: SlackStarts, capsys: pytest.CaptureFixture[str]
) -> None:
    """Event -> first visible text and -> final text in Slack, against `bots ask` (the service
    directly) on the same request in the same run, interleaved. The persona decodes greedily, so
    all three write the same text. Slack's own pacing (1.2 s between edits) is kept."""
    question = "what is your favourite island?"
    servers = {"update": await slack.fake(), "stream": await slack.fake(streaming=True)}
    for server in servers.values():
        await start_bot(server, "socket", update_interval_s=1.2, updates_per_minute=50)
    shows = ("chat.startStream", "chat.appendStream", "chat.stopStream", "chat.update")
    samples: dict[str, list[float]] = {}
    texts: set[str] = set()
    for _ in range(3):
        started = time.perf_counter()
        incoming = Incoming("cli", "", "cli", question, "steady", remember=False)
        reply = await bot.service.start(incoming)
        first = 0.0
        async for _piece in reply:
            first = first or time.perf_counter() - started
        samples.setdefault("direct_first_token_s", []).append(first)
        samples.setdefault("direct_final_s", []).append(time.perf_counter() - started)
        texts.add(reply.text)
        for mode, server in servers.items():
            event = server.user_message(f"steady: {question}", mention=True)
            envelope = await server.deliver_event(event)
            turn = await answered(bot, CHANNEL, event["ts"])  # shown in full by now
            texts.add(turn.content)
            times = [
                c.at - envelope.sent_at
                for c in server.calls
                if c.method in shows and c.at > envelope.sent_at
            ]
            samples.setdefault(f"slack_{mode}_first_visible_s", []).append(times[0])
            samples.setdefault(f"slack_{mode}_final_s", []).append(times[-1])
    figures = {k: round(statistics.median(v), 3) for k, v in samples.items()}
    with capsys.disabled():
        print("\nslack latency (median of 3):", json.dumps(figures))
    assert len(texts) == 1, "greedy decoding: the same answer everywhere"
    for mode in servers:
        assert figures[f"slack_{mode}_first_visible_s"] < figures["direct_first_token_s"] + 1.0
        assert figures[f"slack_{mode}_final_s"] < figures["direct_final_s"] + 2.5
