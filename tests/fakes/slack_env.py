"""A running Slack adapter against the fake Slack, and what tests read from it.

`SlackStarts` starts fakes and adapters (HTTP Events or Socket Mode) and stops every one it
started; `answered` waits for a thread's reply in the store; `shown_text` is what the bot wrote
in a thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bots.adapters.slack.app import SlackAdapter
from bots.adapters.slack.reply import SlackLimits
from bots.chat.model import Turn
from bots.runtime import Runtime
from bots.settings import SlackSettings
from tests.fakes.projects import persona_md, write, write_handbook
from tests.fakes.slack import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET, FakeSlack

# Slack's pacing, shortened for loopback (one limit is changed per test where it matters).
FAST = SlackLimits(
    update_interval_s=0.02,
    updates_per_minute=100_000,
    stream_interval_s=0.02,
    ping_interval_s=0.5,
    replies_interval_s=60.0,
    stop_grace_s=5.0,
)
MODEL_TIMEOUT_S = 90.0
BOUND = "C0BOUND01"  # the deckhand's channel
ALLOWED_USER = "U0ALLOW01"  # the only user the vault lets in

Starter = Callable[..., Awaitable[SlackAdapter]]


def write_slack_project(root: Path) -> None:
    """The handbook and the personas of the Slack module: librarian (strict, citations), pirate
    (the default), deckhand (bound to BOUND), steady (greedy), lookout (two tokens: the quick
    answer a test waits for after messages that must get none) and vault (ALLOWED_USER only, a
    greeting full of mentions)."""
    write_handbook(root)
    personas = {
        "librarian": persona_md(
            "You are the librarian. Answer only from the documents.",
            name="Libby",
            knowledge="[handbook]",
            grounding="strict",
            citations="true",
            description="Answers from the handbook.",
            starters='["How many vacation days?"]',
        ),
        "pirate": persona_md(
            "You are a pirate. Always answer like a pirate.",
            name="Pete",
            description="Talks like a pirate.",
        ),
        "deckhand": persona_md(
            "You are a deckhand. Answer briefly.", name="Dex", slack=f"{{channels: [{BOUND}]}}"
        ),
        "steady": persona_md(
            "You are a calm sailor. Answer briefly.", name="Steady", model="{temperature: 0.0}"
        ),
        "lookout": persona_md(
            "You are a lookout. Answer in one word.",
            name="Lookout",
            model="{temperature: 0.0, max_tokens: 2}",
        ),
        "vault": persona_md(
            "You guard the vault.",
            name="Vault",
            access=f"{{users: [{ALLOWED_USER}]}}",
            greeting='"Hi @here <!channel> <@U0SOMEONE> **welcome**"',
        ),
    }
    for persona_id, text in personas.items():
        write(root / "personas" / persona_id / "persona.md", text)


def slack_limits(**changes: Any) -> SlackLimits:
    """FAST with `changes`."""
    return dataclasses.replace(FAST, **changes)


def slack_settings(server: FakeSlack, mode: str = "http") -> SlackSettings:
    """Credentials for `server` in "http" (signed events) or "socket" mode."""
    return SlackSettings(
        bot_token=BOT_TOKEN,
        app_token=APP_TOKEN if mode == "socket" else "",
        signing_secret=SIGNING_SECRET if mode == "http" else "",
        http_host="127.0.0.1",
        http_port=0,
        api_url=server.api_url,
        streaming=server.streaming,
    )


class SlackStarts:
    """Starts fakes and adapters; `close()` stops the adapters, then closes the apps handed to
    `apps` and the fakes."""

    def __init__(self) -> None:
        self.fakes: list[FakeSlack] = []
        self.adapters: list[SlackAdapter] = []
        self.apps: list[Runtime] = []

    async def fake(self, **options: Any) -> FakeSlack:
        """A started fake Slack (`streaming=`, `customize=`, `stream_expires_after=`)."""
        server = FakeSlack(**options)
        await server.start()
        self.fakes.append(server)
        return server

    async def adapter(
        self, app: Runtime, server: FakeSlack, mode: str = "http", **limits: Any
    ) -> SlackAdapter:
        """The real adapter for `app` against `server`, connected (`limits` change FAST)."""
        adapter = SlackAdapter(
            app.service,
            app.adapters,
            settings=slack_settings(server, mode),
            limits=slack_limits(**limits),
        )
        await adapter.start()
        self.adapters.append(adapter)
        if mode == "socket":
            await server.connected()
        return adapter

    async def close(self) -> None:
        for adapter in self.adapters:
            await adapter.stop()
        for app in self.apps:
            await app.close()
        for server in self.fakes:
            await server.close()


def events_url(adapter: SlackAdapter) -> str:
    return f"http://127.0.0.1:{adapter.http_port}/slack/events"


async def answered(
    app: Runtime, channel: str, root_ts: str, count: int = 1, timeout: float = MODEL_TIMEOUT_S
) -> Turn:
    """Wait until the thread's `count`-th reply is complete and shown; return its turn."""
    store = app.store.file

    def replies() -> list[Turn]:
        conversation = store.conversation_id("slack", f"{channel}:{root_ts}")
        return [
            t
            for t in store.turns(conversation)
            if t.role == "assistant" and t.status != "pending" and t.platform_message_id
        ]

    deadline = time.monotonic() + timeout
    while len(done := await asyncio.to_thread(replies)) < count:
        assert time.monotonic() < deadline, f"no reply in {channel}:{root_ts}"
        await asyncio.sleep(0.05)
    return done[count - 1]


def shown_text(server: FakeSlack, channel: str, thread_ts: str) -> str:
    """The bot's messages in a thread joined as one text."""
    return "\n".join(m.text for m in server.bot_messages(channel, thread_ts))
