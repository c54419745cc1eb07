"""Slack event payloads -> small validated values; anything malformed becomes None.

Slack's payloads are JSON from the network: a field may be missing, of the wrong type, huge, or
carry control characters Slack itself never sends. Each parser checks what the adapter relies
on and returns None (with a debug log naming the reason) instead of raising, so a bad payload
gets no reply and never reaches the model.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# Slack cuts message text at 40,000 characters; anything longer did not come from Slack.
MAX_TEXT_CHARS = 40_000
# Message subtypes that are a person writing something new; edits, deletions, joins, bot posts
# and the like are not answered (answering them could loop or repeat a reply).
ANSWERED_SUBTYPES = frozenset({"", "file_share", "thread_broadcast"})
CHANNEL_ID = re.compile(r"^[CDG][A-Z0-9]{2,30}$")
USER_ID = re.compile(r"^[UW][A-Z0-9]{2,30}$")
TEAM_ID = re.compile(r"^[TE][A-Z0-9]{2,30}$")
TS = re.compile(r"^\d{1,12}\.\d{1,9}$")
# C0 controls other than tab, newline and carriage return, plus DEL: never in a real message.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
THUMBS_UP = frozenset({"+1", "thumbsup"})
THUMBS_DOWN = frozenset({"-1", "thumbsdown"})


@dataclass(frozen=True)
class SlackMessage:
    """A person's message the adapter may answer."""

    channel: str
    ts: str
    user: str
    text: str
    team: str
    thread_ts: str
    channel_type: str
    mention: bool

    @property
    def root_ts(self) -> str:
        """The thread this message belongs to (its own ts when it starts one)."""
        return self.thread_ts or self.ts

    @property
    def in_thread(self) -> bool:
        return bool(self.thread_ts) and self.thread_ts != self.ts

    @property
    def is_dm(self) -> bool:
        return self.channel_type == "im" or self.channel.startswith("D")

    @property
    def key(self) -> str:
        """Slack's identity of a message: its channel and timestamp."""
        return f"{self.channel}:{self.ts}"


@dataclass(frozen=True)
class SlackReaction:
    """A thumbs up (+1) or down (-1) added to or removed from a message."""

    user: str
    channel: str
    ts: str
    value: int

    @property
    def key(self) -> str:
        return f"{self.channel}:{self.ts}"


def parse_message(event: Any, team_id: Any = "") -> SlackMessage | None:
    """An `app_mention` or `message` event -> SlackMessage, or None when not to be answered."""
    if not isinstance(event, dict):
        _skip("event is not an object")
        return None
    kind = event.get("type")
    if kind not in ("message", "app_mention"):
        _skip(f"event type {kind!r}")
        return None
    subtype = event.get("subtype") or ""
    if not isinstance(subtype, str) or subtype not in ANSWERED_SUBTYPES:
        _skip(f"message subtype {subtype!r}")
        return None
    if event.get("bot_id") or event.get("bot_profile"):
        _skip("posted by a bot")
        return None
    channel, ts = _id(event, "channel", CHANNEL_ID), _id(event, "ts", TS)
    user, thread_ts = _id(event, "user", USER_ID), _id(event, "thread_ts", TS)
    if not (channel and ts and user) or (event.get("thread_ts") and not thread_ts):
        _skip("channel, ts, user or thread_ts missing or malformed")
        return None
    text = event.get("text")
    if not isinstance(text, str) or len(text) > MAX_TEXT_CHARS or CONTROL.search(text):
        _skip("text missing, too long or with control characters")
        return None
    channel_type = event.get("channel_type")
    return SlackMessage(
        channel=channel,
        ts=ts,
        user=user,
        text=text,
        team=_id(event, "team", TEAM_ID) or _id({"team": team_id}, "team", TEAM_ID),
        thread_ts=thread_ts,
        channel_type=channel_type if isinstance(channel_type, str) else "",
        mention=kind == "app_mention",
    )


def parse_reaction(event: Any) -> SlackReaction | None:
    """A `reaction_added`/`reaction_removed` event with a thumbs up or down on a message."""
    if not isinstance(event, dict) or not isinstance(event.get("item"), dict):
        _skip("reaction event or its item is not an object")
        return None
    reaction, item = event.get("reaction"), event["item"]
    user, channel = _id(event, "user", USER_ID), _id(item, "channel", CHANNEL_ID)
    ts, on_message = _id(item, "ts", TS), item.get("type") == "message"
    if not (isinstance(reaction, str) and user and channel and ts and on_message):
        _skip("reaction, user or item missing or malformed")
        return None
    # Skin tones arrive as "+1::skin-tone-3".
    base = reaction.split("::", 1)[0]
    value = 1 if base in THUMBS_UP else -1 if base in THUMBS_DOWN else 0
    return SlackReaction(user=user, channel=channel, ts=ts, value=value) if value else None


def _id(data: dict[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    """data[key] when it is a string of the expected shape, else ""."""
    value = data.get(key)
    return value if isinstance(value, str) and pattern.match(value) else ""


def _skip(reason: str) -> None:
    log.debug("slack event ignored: %s", reason)
