"""A running Discord world: the fake Discord, a real app on a tmp project, the real adapter.

`DiscordWorlds.start(...)` builds one (the `start_discord` fixture in tests/conftest.py hands it
out and stops everything after the test); `DiscordEnv` is what a test does and reads there.
The guild has users alice, bob, carol (role staff) and otherbot (a bot), channels general,
library (bound to the librarian), cove (bound to the pirate) and quiet, and the personas of
`write_personas`. Every outgoing message is checked for disabled mentions at the end.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bots.adapters.discord.bot import DiscordAdapter
from bots.adapters.discord.sinks import RetryPolicy
from bots.chat.model import Turn
from bots.engine.base import Engine
from bots.engine.factory import make_engine
from bots.runtime import Runtime
from bots.settings import Settings
from tests.fakes.discord import BotAccount, Call, FakeDiscord
from tests.fakes.engines import ScriptedEngine
from tests.fakes.projects import persona_md, write

TOKEN = "fake-bot-token.for-tests"
EDIT_INTERVAL_S = 0.05
MODEL_TIMEOUT_S = 120.0  # the real model on a busy shared machine can be slow
FAST_RETRY = RetryPolicy(first_delay_s=0.05, max_delay_s=0.2, give_up_after_s=30.0)
GUILD_READY_TIMEOUT_S = 0.05  # discord.py waits 2 s after the last GUILD_CREATE by default


@dataclass
class DiscordEnv:
    """One running world: the fake Discord, the app, the adapter, and who is who."""

    fake: FakeDiscord
    bot: BotAccount
    app: Runtime
    adapter: DiscordAdapter
    channels: dict[str, str]
    users: dict[str, dict[str, Any]]
    roles: dict[str, str]
    engine: ScriptedEngine | None = None
    persona_bots: dict[str, BotAccount] = field(default_factory=dict)

    def say(
        self,
        user: str,
        channel: str,
        text: str,
        *,
        mention: bool = True,
        to: BotAccount | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """`user` posts in `channel` (a name, or "dm"); by default @mentioning the main bot
        (`to` picks another bot: the one mentioned or DMed)."""
        bot = to or self.bot
        if channel == "dm":
            channel_id = self.fake.dm_channel(self.users[user], bot)
        else:
            channel_id = self.channels.get(channel, channel)
        return self.fake.user_message(
            self.users[user], channel_id, text, mention=bot if mention else None, **kwargs
        )

    def turns_after(self, user_message_id: str) -> list[Turn]:
        store = self.app.store.file
        asked = store.turn_by_message("discord", user_message_id)
        if asked is None:
            return []
        return [t for t in store.turns(asked.conversation_id) if t.id > asked.id]

    async def answer(
        self, message: dict[str, Any], timeout: float = MODEL_TIMEOUT_S
    ) -> tuple[Turn, list[dict[str, Any]]]:
        """Wait until the reply to `message` is complete; its stored turn and Discord messages."""

        def done() -> Turn | None:
            replies = [t for t in self.turns_after(message["id"]) if t.role == "assistant"]
            if replies and replies[0].status != "pending" and replies[0].platform_message_id:
                return replies[0]
            return None

        turn: Turn = await self.fake.wait_for(done, timeout)
        return turn, self.shown_from(turn.platform_message_id)

    def shown_from(self, first_id: str) -> list[dict[str, Any]]:
        """The messages showing a reply: its first message and the parts it was split into."""
        parts = self.adapter.conversations.part_of
        later = [str(p) for p, first in parts.items() if str(first) == first_id]
        ids = [first_id, *sorted(later, key=int)]
        return [self.fake.messages[i] for i in ids]

    def sent_messages(self) -> list[Call]:
        """Every REST call that created a visible message."""
        return [
            c
            for c in self.fake.calls
            if c.method == "POST" and c.status < 300 and c.content is not None
        ]


StartDiscord = Callable[..., Awaitable[DiscordEnv]]


def check_no_pings(calls: list[Call]) -> None:
    """Every outgoing message (content or embeds) carried allowed_mentions with nothing allowed."""
    for call in calls:
        body = call.body if isinstance(call.body, dict) else {}
        data = body.get("data") if isinstance(body.get("data"), dict) else body
        if call.content is None and not (isinstance(data, dict) and data.get("embeds")):
            continue
        mentions = call.allowed_mentions
        assert isinstance(mentions, dict), f"{call.method} {call.path} had no allowed_mentions"
        assert mentions.get("parse") == [], call
        assert not mentions.get("users") and not mentions.get("roles"), call
        assert not mentions.get("replied_user", False), call


def start_adapter(app: Runtime, **options: Any) -> DiscordAdapter:
    """The real adapter, tuned for loopback (no 2 s guild wait, fast retries)."""
    return DiscordAdapter(
        app.service,
        app.adapters,
        guild_ready_timeout_s=GUILD_READY_TIMEOUT_S,
        **{"retry": FAST_RETRY, **options},
    )


class DiscordWorlds:
    """Starts Discord worlds on one project folder and stops every one it started."""

    def __init__(self, project: Path, settings_for: Callable[..., Settings]) -> None:
        self.project = project
        self.settings_for = settings_for
        self.started: list[DiscordEnv] = []

    async def start(
        self,
        *,
        engine: ScriptedEngine | None = None,
        wrap_engine: Callable[[Engine], Engine] | None = None,
        fake_options: dict[str, Any] | None = None,
        adapter_options: dict[str, Any] | None = None,
        persona_bots: tuple[str, ...] = (),
        extra_channels: tuple[str, ...] = (),
        **overrides: object,
    ) -> DiscordEnv:
        """`engine=ScriptedEngine(...)` swaps the model (`wrap_engine` wraps the real one);
        `fake_options`, `adapter_options`, `extra_channels` and settings overrides (dotted
        names; a callable is given the channel ids) tune it."""
        fake = FakeDiscord(**(fake_options or {}))
        bot = fake.add_bot(TOKEN)
        own_bots = {p: fake.add_bot(f"{p}-token", username=p) for p in persona_bots}
        if persona_bots:
            overrides["discord.persona_tokens"] = ",".join(f"{p}={p}-token" for p in persona_bots)
        staff = fake.add_role("staff")
        users = {
            "alice": fake.add_user("alice"),
            "bob": fake.add_user("bob"),
            "carol": fake.add_user("carol", roles=[staff]),
            "otherbot": fake.add_user("otherbot", bot=True),
        }
        channels = {
            name: fake.add_channel(name)
            for name in ("general", "library", "cove", "quiet", *extra_channels)
        }
        await fake.start()
        write_personas(self.project, channels, users, staff)
        settings = self.settings_for(
            self.project,
            **{
                "default_persona": "pirate",
                "discord.token": TOKEN,
                "discord.api_url": fake.api_url,
                "discord.gateway_url": fake.gateway_url,
                "discord.edit_interval_s": EDIT_INTERVAL_S,
                "model.max_tokens": 8,  # the real model: a few tokens say enough here
                **{k: v(channels) if callable(v) else v for k, v in overrides.items()},
            },
        )
        app = Runtime.create(
            settings, engine=wrap_engine(make_engine(settings)) if wrap_engine else engine
        )
        await app.start()
        adapter = start_adapter(app, **(adapter_options or {}))
        await adapter.start()
        env = DiscordEnv(
            fake, bot, app, adapter, channels, users, {"staff": staff}, engine, own_bots
        )
        self.started.append(env)
        return env

    async def stop_all(self) -> None:
        for env in self.started:
            await env.adapter.stop()
            await env.app.close()
            await env.fake.close()
            check_no_pings(env.fake.calls)


def write_personas(
    project: Path, channels: dict[str, str], users: dict[str, dict[str, Any]], staff: str
) -> None:
    """The librarian (bound to #library, strict, citations), the pirate (bound to #cove, the
    default) and the vault (alice and the staff role only)."""
    personas = project / "personas"
    write(
        personas / "librarian" / "persona.md",
        persona_md(
            "You are the librarian. Answer only from the documents.",
            name="Libby",
            description="Answers questions about the handbook.",
            knowledge="[handbook]",
            grounding="strict",
            citations="true",
            starters='["How many vacation days do I get?", "How long must passwords be?"]',
            discord=f"{{channels: ['{channels['library']}']}}",
        ),
    )
    write(
        personas / "pirate" / "persona.md",
        persona_md(
            "You are a pirate. Always answer like a pirate.",
            name="Pete",
            description="A pirate who loves the sea.",
            discord=f"{{channels: ['{channels['cove']}']}}",
        ),
    )
    write(
        personas / "vault" / "persona.md",
        persona_md(
            "You guard the vault. Answer briefly.",
            name="Vault",
            access=f"{{users: ['{users['alice']['id']}'], roles: ['{staff}']}}",
        ),
    )
