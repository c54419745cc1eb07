"""One driver per platform for the contract suite (tests/test_platform_contract.py).

A driver starts one world (the fake platform, a real app whose engine is a `ScriptedEngine`, the
real adapter) and says in its platform's terms how to send a message, a reaction or a malformed
payload, and how to read back what the bot showed. The contract then states each behaviour once.

Both worlds have users alice (let in by the vault persona), bob and carol; channels general
(nothing bound to it), denied and outside (for place policies); the personas pirate (Pete, the
default) and vault (Vault, alice only).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from bots.adapters.slack.reply import PLACEHOLDER
from bots.chat.model import Turn
from bots.runtime import Runtime
from bots.settings import Settings
from tests.fakes.discord_env import DiscordEnv, StartDiscord
from tests.fakes.engines import ScriptedEngine
from tests.fakes.projects import persona_md, write
from tests.fakes.slack import BOT_ID, BOT_USER, CHANNEL, DM, USER, FakeSlack
from tests.fakes.slack_env import SlackStarts, answered, events_url

Emoji = Literal["up", "down", "other"]
PLATFORMS = ("discord", "slack")
# Slack's messages are cut this short in the contract world, so that a long reply splits in
# the middle of its code block as it does on Discord at 2000.
SLACK_MESSAGE_CHARS = 1000
# A reply under way at shutdown is cut this soon.
STOP_GRACE_S = 0.05


@dataclass(frozen=True)
class Asked:
    """A message a user sent: its platform key (Discord: message id, Slack: ts) and place."""

    key: str
    channel: str
    user: str


@dataclass(frozen=True)
class Said:
    """Something the bot showed: its text now, its key, the key of the message it answers ("" if
    none), the name it showed under, and the one user who sees it ("" for everyone there)."""

    text: str
    key: str
    to: str
    by: str = ""
    seen_by: str = ""


@dataclass(frozen=True)
class Answer:
    turn: Turn
    parts: list[Said]

    @property
    def text(self) -> str:
        return "\n".join(p.text for p in self.parts)


class Driver(Protocol):
    """What the contract needs of a platform."""

    name: str  # the variant: "discord", "slack" or "slack-streaming"
    platform: str  # "discord" or "slack": as the store and `app.adapters` name it
    app: Runtime
    engine: ScriptedEngine
    message_chars: int  # the most characters one message shows
    code_fence: str  # how a Python code block opens as shown
    busy_marks: list[str]  # what marks the asker's message when the model is busy
    private_notices: bool  # refusals are said to the asker alone

    async def ask(self, user: str, text: str, *, channel: str = "general") -> Asked:
        """`user` addresses the bot with `text` (a mention) in `channel`."""

    async def answer(self, asked: Asked) -> Answer:
        """Wait for the whole reply to `asked`."""

    def said(self) -> list[Said]:
        """Everything the bot showed so far, everywhere."""

    def received(self) -> str:
        """Everything the fake platform received from the bot (every message, edit, block and
        stream chunk), as one text to search."""

    async def told(self, asked: Asked) -> list[Said]:
        """Wait until the bot has shown the asker something in answer (a placeholder is not)."""

    async def react(self, user: str, key: str, emoji: Emoji, *, remove: bool = False) -> None:
        """`user` adds (or removes) a thumbs up, a thumbs down or another emoji on `key`."""

    async def send_malformed(self) -> None:
        """Payloads no well-behaved platform sends (wrong types, missing fields, huge text)."""

    async def send_from_bots(self) -> None:
        """Messages the bot must ignore: other bots', its own, edits and deletions."""

    def check_connected(self) -> None:
        """Assert that the connection never dropped."""

    def check_within_limits(self) -> None:
        """Assert that the platform never refused a message as too long."""

    async def stop(self) -> None:
        """Stop the adapter (as a shutdown does)."""

    def note(self, text: str) -> str:
        """A note under a cut reply as the platform styles it."""

    def live_pings(self, text: str) -> list[str]:
        """Mentions in shown text that would notify people."""

    def marks(self, asked: Asked) -> list[str]:
        """Marks (reactions) the bot put on the asker's message."""

    def user_id(self, user: str) -> str: ...

    def stored_key(self, asked: Asked) -> str:
        """The id under which the store keeps `asked`."""


def said_to(driver: Driver, asked: Asked) -> list[Said]:
    return [s for s in driver.said() if s.to == asked.key]


def turns_after(driver: Driver, asked: Asked) -> list[Turn]:
    """The stored turns after `asked` in its conversation ([] when it was never admitted)."""
    store = driver.app.store.file
    turn = store.turn_by_message(driver.platform, driver.stored_key(asked))
    if turn is None:
        return []
    return [t for t in store.turns(turn.conversation_id) if t.id > turn.id]


def feedback(driver: Driver) -> set[tuple[str, int, int]]:
    """Stored feedback as (user name, value, turn id)."""
    names = {driver.user_id(u): u for u in ("alice", "bob", "carol")}
    return {(names[f.user_id], f.value, f.turn_id) for f in driver.app.store.file.feedback()}


# --------------------------------------------------------------------------- Discord

DISCORD_EMOJI = {"up": "👍", "down": "👎", "other": "🎉"}
DISCORD_MASS_MENTION = re.compile(r"@(everyone|here)\b")


@dataclass
class DiscordDriver:
    env: DiscordEnv
    engine: ScriptedEngine
    name: str = "discord"
    platform: str = "discord"
    message_chars: int = 2000
    code_fence: str = "```python"
    busy_marks: list[str] = field(default_factory=list)  # Discord has none: the notice says it
    private_notices: bool = False  # a refusal is a reply to the message
    asks: dict[str, dict[str, Any]] = field(default_factory=dict)
    posed: set[str] = field(default_factory=set)  # messages this driver wrote as the bot

    @property
    def app(self) -> Runtime:
        return self.env.app

    def user_id(self, user: str) -> str:
        return str(self.env.users[user]["id"])

    def stored_key(self, asked: Asked) -> str:
        return asked.key

    async def ask(self, user: str, text: str, *, channel: str = "general") -> Asked:
        message = self.env.say(user, channel, text)
        self.asks[message["id"]] = message
        return Asked(message["id"], message["channel_id"], user)

    async def answer(self, asked: Asked) -> Answer:
        turn, shown = await self.env.answer(self.asks[asked.key])
        return Answer(turn, [self._said(m, asked.key) for m in shown])

    def received(self) -> str:
        return "\n".join(json.dumps(c.body, default=str) for c in self.env.fake.calls)

    def _said(self, message: dict[str, Any], to: str) -> Said:
        return Said(message["content"], message["id"], to, message["author"]["username"])

    def said(self) -> list[Said]:
        fake = self.env.fake
        answers: dict[str, str] = {}  # shown message id -> the asked message it answers
        for key in self.asks:
            for turn in self.env.turns_after(key):
                if turn.role == "assistant" and turn.platform_message_id:
                    for shown in self.env.shown_from(turn.platform_message_id):
                        answers[shown["id"]] = key
        ours = {b.id for b in fake.bots.values()}
        said = []
        for message in fake.messages.values():
            by_us = message["author"]["id"] in ours or message.get("webhook_id") in fake.webhooks
            if not by_us or message["id"] in self.posed:
                continue
            reference = (message.get("message_reference") or {}).get("message_id")
            to = reference or answers.get(message["id"]) or self._latest_ask(message)
            said.append(self._said(message, to))
        return said

    def _latest_ask(self, message: dict[str, Any]) -> str:
        """A reply still being written is not stored yet: it answers the last message asked
        before it in its channel (the contract asks one thing at a time where this matters)."""
        earlier = [
            int(key)
            for key, asked in self.asks.items()
            if asked["channel_id"] == message["channel_id"] and int(key) < int(message["id"])
        ]
        return str(max(earlier)) if earlier else ""

    async def told(self, asked: Asked) -> list[Said]:
        told: list[Said] = await self.env.fake.wait_for(lambda: said_to(self, asked))
        return told

    async def react(self, user: str, key: str, emoji: Emoji, *, remove: bool = False) -> None:
        self.env.fake.react(self.env.users[user], key, DISCORD_EMOJI[emoji], remove=remove)

    async def send_malformed(self) -> None:
        env = self.env
        base = env.fake.as_event(
            env.fake.message_payload(
                env.users["alice"], env.channels["quiet"], "x", mention=env.bot
            )
        )
        bad: list[dict[str, Any]] = [
            {k: v for k, v in base.items() if k != "author"},
            {k: v for k, v in base.items() if k != "channel_id"},
            {**base, "id": "not-a-snowflake"},
            {**base, "content": 12345},
            {**base, "author": "alice"},
            {**base, "mentions": "everyone"},
            {**base, "content": f"<@{env.bot.id}> " + "A" * 1_000_000},
            {**base, "content": f"<@{env.bot.id}> \x00\x01\x02\x1b\x7f"},
            {},
        ]
        for number, payload in enumerate(bad):
            payload = {**payload, "id": payload.get("id", str(10**18 + number))}
            env.fake.dispatch("MESSAGE_CREATE", payload)
        env.fake.dispatch("INTERACTION_CREATE", {"id": "1", "type": 2})
        env.fake.dispatch("MESSAGE_REACTION_ADD", {"emoji": None})

    async def send_from_bots(self) -> None:
        env = self.env
        general, cove = env.channels["general"], env.channels["cove"]
        env.fake.user_message(env.users["otherbot"], general, "hi", mention=env.bot)
        env.fake.user_message(env.users["otherbot"], cove, "hello pirate")
        hook = {"id": "1", "username": "Some Hook", "discriminator": "0000", "avatar": None}
        from_hook = env.fake.message_payload(hook, cove, "from a webhook")
        env.fake.dispatch("MESSAGE_CREATE", {**env.fake.as_event(from_hook), "webhook_id": "1"})
        own = env.fake.user_message(env.bot.user, cove, "my own words")
        self.posed.add(own["id"])

    def check_connected(self) -> None:
        assert self.env.bot.identifies == 1 and self.env.bot.resumes == 0

    def check_within_limits(self) -> None:
        assert not [c for c in self.env.fake.calls if c.status == 400], "over Discord's limit"

    async def stop(self) -> None:
        await self.env.adapter.stop()

    def note(self, text: str) -> str:
        return text

    def live_pings(self, text: str) -> list[str]:
        return DISCORD_MASS_MENTION.findall(text)

    def marks(self, asked: Asked) -> list[str]:
        return []


async def start_discord_driver(
    start_discord: StartDiscord, engine: ScriptedEngine, **overrides: object
) -> DiscordDriver:
    env = await start_discord(
        engine=engine,
        extra_channels=("denied", "outside"),
        adapter_options={"stop_grace_s": STOP_GRACE_S},
        **overrides,
    )
    return DiscordDriver(env, engine)


# --------------------------------------------------------------------------- Slack

SLACK_USERS = {"alice": "U0ALICE01", "bob": "U0BOB0001", "carol": "U0CAROL01"}
SLACK_CHANNELS = {"general": CHANNEL, "denied": "C0DENIED1", "outside": "C0OUTSIDE"}
SLACK_EMOJI = {"up": "+1", "down": "thumbsdown::skin-tone-2", "other": "tada"}
SLACK_LIVE = re.compile(r"<[!@#][^>]*>|@(?:channel|here|everyone)\b", re.IGNORECASE)


@dataclass
class SlackDriver:
    fake: FakeSlack
    app: Runtime
    engine: ScriptedEngine
    url: str
    adapter: Any
    name: str = "slack"
    platform: str = "slack"
    message_chars: int = SLACK_MESSAGE_CHARS
    code_fence: str = "```"  # mrkdwn code blocks carry no language
    busy_marks: list[str] = field(default_factory=lambda: ["hourglass_flowing_sand"])
    private_notices: bool = True  # chat.postEphemeral

    def user_id(self, user: str) -> str:
        return SLACK_USERS[user]

    def stored_key(self, asked: Asked) -> str:
        return f"{asked.channel}:{asked.key}"

    async def ask(self, user: str, text: str, *, channel: str = "general") -> Asked:
        event = self.fake.user_message(
            text, channel=SLACK_CHANNELS[channel], user=SLACK_USERS[user], mention=True
        )
        status, _, _ = await self.fake.post_event(self.url, event)
        assert status == 200
        return Asked(event["ts"], event["channel"], user)

    async def answer(self, asked: Asked) -> Answer:
        turn = await answered(self.app, asked.channel, asked.key)
        parts = self.fake.bot_messages(asked.channel, asked.key)
        return Answer(turn, [Said(m.text, m.ts, asked.key, m.username) for m in parts])

    def received(self) -> str:
        return "\n".join(json.dumps(c.args, default=str) for c in self.fake.calls)

    def said(self) -> list[Said]:
        shown = [Said(m.text, m.ts, m.thread_ts, m.username) for m in self.fake.bot_messages()]
        names = {user_id: name for name, user_id in SLACK_USERS.items()}
        private = [
            Said(n["text"], "", n.get("thread_ts", ""), seen_by=names.get(n["user"], n["user"]))
            for n in self.fake.ephemeral
        ]
        return shown + private

    async def told(self, asked: Asked) -> list[Said]:
        def told() -> list[Said]:
            return [s for s in said_to(self, asked) if s.text != PLACEHOLDER]

        result: list[Said] = await self.fake.wait_for(told)
        return result

    async def react(self, user: str, key: str, emoji: Emoji, *, remove: bool = False) -> None:
        message = next(m for (_, ts), m in self.fake.messages.items() if ts == key)
        event = {
            "type": "reaction_removed" if remove else "reaction_added",
            "user": SLACK_USERS[user],
            "reaction": SLACK_EMOJI[emoji],
            "item_user": BOT_USER if message.bot_id == BOT_ID else message.user,
            "item": {"type": "message", "channel": message.channel, "ts": key},
            "event_ts": self.fake.new_ts(),
        }
        status, _, _ = await self.fake.post_event(self.url, event)
        assert status == 200

    async def send_malformed(self) -> None:
        fake = self.fake
        good = fake.user_message("pirate: fine", mention=True)
        broken: list[Any] = [
            "not an object",
            {"type": "app_mention"},
            {**good, "ts": fake.new_ts(), "channel": None},
            {**good, "ts": fake.new_ts(), "text": 12345},
            {**good, "ts": fake.new_ts(), "user": [USER]},
            {**good, "ts": fake.new_ts(), "thread_ts": {"ts": 1}},
            {**good, "ts": fake.new_ts(), "text": "pirate: " + "x" * 50_000},
            {**good, "ts": fake.new_ts(), "text": "pirate: hi\x00\x07there"},
            {**good, "ts": "not-a-ts"},
        ]
        for event in broken:
            status, _, _ = await fake.post_event(self.url, event)
            assert status in (200, 404)
        status, _, _ = await fake.post_signed(self.url, "{not json")
        assert status in (200, 400, 401, 404)

    async def send_from_bots(self) -> None:
        fake = self.fake
        dm = DM
        other_bot = fake.user_message("pirate: hi", mention=True, bot_id="B0OTHER01")
        own = fake.user_message("pirate: hi", channel=dm, user=BOT_USER)
        edited = {
            "type": "message",
            "subtype": "message_changed",
            "channel": dm,
            "hidden": True,
            "ts": fake.new_ts(),
            "event_ts": fake.new_ts(),
            "channel_type": "im",
            "message": {
                "type": "message",
                "user": USER,
                "text": "pirate: edited",
                "ts": "1.000001",
            },
        }
        deleted = {
            "type": "message",
            "subtype": "message_deleted",
            "channel": dm,
            "hidden": True,
            "ts": fake.new_ts(),
            "deleted_ts": "1.000001",
            "channel_type": "im",
        }
        bot_post = fake.user_message("I am a bot", channel=dm, subtype="bot_message", bot_id=BOT_ID)
        for event in (other_bot, own, edited, deleted, bot_post):
            status, _, _ = await fake.post_event(self.url, event)
            assert status in (200, 404)

    def check_connected(self) -> None:
        """HTTP Events mode has no connection to lose: every event above got its answer."""

    def check_within_limits(self) -> None:
        """The fake Slack stores what it is sent (up to 40,000 characters, as Slack does): the
        lengths of the stored parts are the check."""

    async def stop(self) -> None:
        await self.adapter.stop()

    def note(self, text: str) -> str:
        return f"_{text}_"

    def live_pings(self, text: str) -> list[str]:
        return SLACK_LIVE.findall(text)

    def marks(self, asked: Asked) -> list[str]:
        return [name for _, ts, name in self.fake.reactions if ts == asked.key]


def write_slack_personas(root: Path) -> None:
    """The pirate as the project fixture writes it; the vault for alice's Slack id."""
    write(
        root / "personas" / "vault" / "persona.md",
        persona_md(
            "You guard the vault. Answer briefly.",
            name="Vault",
            access=f"{{users: ['{SLACK_USERS['alice']}']}}",
        ),
    )


async def start_slack_driver(
    starts: SlackStarts,
    project: Path,
    settings_for: Callable[..., Settings],
    engine: ScriptedEngine,
    *,
    streaming: bool = False,
    **overrides: object,
) -> SlackDriver:
    write_slack_personas(project)
    values = {k: v(SLACK_CHANNELS) if callable(v) else v for k, v in overrides.items()}
    app = Runtime.create(settings_for(project, default_persona="pirate", **values), engine=engine)
    await app.start()
    starts.apps.append(app)
    fake = await starts.fake(streaming=streaming)
    adapter = await starts.adapter(
        app, fake, "http", message_chars=SLACK_MESSAGE_CHARS, stop_grace_s=STOP_GRACE_S
    )
    driver = SlackDriver(fake, app, engine, events_url(adapter), adapter)
    if streaming:
        driver.name = "slack-streaming"
        driver.code_fence = "```python"  # the streaming API renders Markdown itself
    return driver
