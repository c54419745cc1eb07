"""Markdown -> Slack mrkdwn, mention neutralisation, Slack markup -> plain text, event parsing."""

from __future__ import annotations

import pytest

from bots.adapters.slack.events import MAX_TEXT_CHARS, parse_message, parse_reaction
from bots.adapters.slack.format import ZWSP, from_mrkdwn, neutralise_markdown, to_mrkdwn


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("**bold** and __also bold__", "*bold* and *also bold*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("~~gone~~", "~gone~"),
        ("# Title\n## Sub **x**", "*Title*\n*Sub x*"),
        ("- one\n* two\n+ three\n  - nested", "• one\n• two\n• three\n  • nested"),
        ("1. first\n2. second", "1. first\n2. second"),
        ("> quoted **b**", "> quoted *b*"),
        (
            "[the docs](https://example.com/a?b=1&c=2)",
            "<https://example.com/a?b=1&amp;c=2|the docs>",
        ),
        ("see https://example.com/x.", "see <https://example.com/x>."),
        ("<https://example.com>", "<https://example.com>"),
        ("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d"),
        ("2*3 = 6 and 4 * 5, a*b*c", "2*3 = 6 and 4 * 5, a*b*c"),
        ("use `x < y` here", "use `x &lt; y` here"),
        ("---", "──────────"),
    ],
)
def test_markdown_becomes_mrkdwn(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn


def test_code_blocks_keep_their_text_escaped_and_drop_the_language() -> None:
    markdown = "Run:\n```python\nif a < b:\n    print('**no**')\n```\nDone."
    assert to_mrkdwn(markdown) == "Run:\n```\nif a &lt; b:\n    print('**no**')\n```\nDone."


def test_an_unclosed_code_block_is_closed() -> None:
    assert to_mrkdwn("```\ncode") == "```\ncode\n```"


@pytest.mark.parametrize(
    "ping",
    ["<!channel>", "<!here>", "<!everyone>", "<@U0123ABCD>", "<!subteam^S012|team>", "<#C0123|x>"],
)
def test_generated_mentions_never_reach_slack_as_markup(ping: str) -> None:
    shown = to_mrkdwn(f"hello {ping} there")
    assert ping not in shown and "&lt;" in shown
    streamed = neutralise_markdown(f"hello {ping} there")
    assert ping not in streamed and "<" + ZWSP in streamed


@pytest.mark.parametrize("word", ["@here", "@channel", "@everyone", "@Here"])
def test_plain_broadcast_words_are_broken(word: str) -> None:
    assert word not in to_mrkdwn(f"hey {word}!")
    assert word not in neutralise_markdown(f"hey {word}!")


@pytest.mark.parametrize(
    "link",
    ["[x](javascript:alert(1))", "[x](<!channel>)", "[x|<!here>](https://e.com)"],
)
def test_links_cannot_smuggle_markup(link: str) -> None:
    shown = to_mrkdwn(link)
    assert "<!" not in shown and "<javascript" not in shown


def test_slack_markup_becomes_plain_text_for_the_model() -> None:
    text = "<@U0BOT> tutor: is <https://x.com|this> &amp; <#C1|general> ok <!here> &lt;b&gt;"
    assert from_mrkdwn(text, strip_user="U0BOT") == (
        "tutor: is this (https://x.com) & #general ok @here <b>"
    )
    assert from_mrkdwn("<@U0OTHER|ada> said <mailto:a@b.c>") == "@ada said mailto:a@b.c"


def _event(**changes: object) -> dict[str, object]:
    event: dict[str, object] = {
        "type": "message",
        "channel": "C0CHAN001",
        "user": "U0USER001",
        "text": "hi",
        "ts": "1700000000.000100",
        "channel_type": "channel",
    }
    event.update(changes)
    return event


def test_a_person_message_is_parsed() -> None:
    message = parse_message(_event(thread_ts="1700000000.000001"), "T0TEAM001")
    assert message is not None
    assert (message.team, message.root_ts, message.in_thread, message.is_dm) == (
        "T0TEAM001",
        "1700000000.000001",
        True,
        False,
    )
    assert message.key == "C0CHAN001:1700000000.000100"


@pytest.mark.parametrize(
    "changes",
    [
        {"subtype": "message_changed"},
        {"subtype": "message_deleted"},
        {"subtype": "bot_message"},
        {"bot_id": "B0BOT0001"},
        {"channel": None},
        {"channel": "general"},
        {"user": 42},
        {"ts": "yesterday"},
        {"thread_ts": ["x"]},
        {"text": None},
        {"text": "x" * (MAX_TEXT_CHARS + 1)},
        {"text": "bell\x07"},
        {"type": "reaction_added"},
    ],
)
def test_messages_not_to_answer_are_none(changes: dict[str, object]) -> None:
    assert parse_message(_event(**changes)) is None


def test_non_objects_are_none() -> None:
    assert parse_message("message") is None
    assert parse_reaction(["reaction"]) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("+1", 1),
        ("thumbsup", 1),
        ("+1::skin-tone-4", 1),
        ("-1", -1),
        ("thumbsdown", -1),
        ("tada", 0),
    ],
)
def test_thumbs_reactions_are_votes(name: str, value: int) -> None:
    event = {
        "type": "reaction_added",
        "user": "U0USER001",
        "reaction": name,
        "item": {"type": "message", "channel": "C0CHAN001", "ts": "1700000000.000100"},
    }
    reaction = parse_reaction(event)
    assert (reaction.value if reaction else 0) == value
