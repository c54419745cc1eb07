"""Several `bots serve` processes on one PostgreSQL database behave as one bot: against the
fake Slack (two Socket Mode connections, events and their retries spread over both), the fake
Discord (one token, one gateway shard, its holder killed mid-reply) and a database restart
while replies are under way. The model is a scripted OpenAI-compatible server every instance
shares (`model.endpoint`), as llama-server is in the compose file."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import CliRunner

from bots.cli import main
from tests.fakes.discord import FakeDiscord
from tests.fakes.model_server import ModelServer
from tests.fakes.projects import write_project
from tests.fakes.slack import APP_TOKEN, BOT_TOKEN, CHANNEL, SIGNING_SECRET, FakeSlack
from tests.postgres_server import free_port
from tests.serve_process import ServerProcess, start_server

DISCORD_TOKEN = "fake-bot-token.for-instances"
TAKEOVER_BOUND_S = 10.0


@pytest.fixture
async def model() -> AsyncIterator[ModelServer]:
    server = ModelServer()
    await server.start()
    yield server
    await server.close()


class Instances:
    """Starts `bots serve` processes, each on its own copy of the project; stops them all."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.started: list[ServerProcess] = []

    async def start(self, name: str, **env: str) -> ServerProcess:
        project = write_project(self.root / name)
        server = await asyncio.to_thread(
            start_server, project, env={**self.env, **env}, log=self.root / f"{name}.log"
        )
        self.started.append(server)
        return server

    async def stop_all(self) -> None:
        for server in self.started:
            await asyncio.to_thread(server.stop, 20.0)


@pytest.fixture
async def instances(
    tmp_path: Path, database_url: str, model: ModelServer
) -> AsyncIterator[Instances]:
    started = Instances(
        tmp_path,
        {
            "BOTS_DATABASE_URL": database_url,
            "BOTS_MODEL_ENDPOINT": model.url,
            "BOTS_DEFAULT_PERSONA": "pirate",
            "BOTS_POLICY_RATE_LIMIT_MESSAGES": "1000",
        },
    )
    yield started
    await started.stop_all()


def replies_to(url: str, platform: str, message_id: str) -> list[tuple[str, str]]:
    """(role, status) of the turns from the one that stored `message_id` on, in order."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT t.role, t.status FROM turns t JOIN turns asked "
            "ON asked.conversation_id = t.conversation_id AND t.id >= asked.id "
            "JOIN conversations c ON c.id = asked.conversation_id "
            "WHERE c.platform = %s AND asked.platform_message_id = %s ORDER BY t.id",
            (platform, message_id),
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


async def until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await asyncio.to_thread(check)):
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.05)
    return value


async def get(server: ServerProcess, path: str) -> httpx.Response:
    # On a thread: the fakes and the model server answer on this test's event loop.
    return await asyncio.to_thread(httpx.get, server.url + path, timeout=10)


async def status(server: ServerProcess) -> dict[str, Any]:
    return dict((await get(server, "/status")).json())


# --------------------------------------------------------------------------------- Slack


async def test_two_instances_answer_every_slack_mention_once(
    instances: Instances, database_url: str, model: ModelServer, postgres: Any
) -> None:
    fake = FakeSlack()
    await fake.start()
    try:
        slack = {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_APP_TOKEN": APP_TOKEN,
            "SLACK_API_URL": fake.api_url,
            "BOTS_SLACK_STREAMING": "false",
        }
        a = await instances.start("a", **slack)
        await fake.wait_for(lambda: len(fake.sockets) == 1, 30)
        b = await instances.start("b", **slack)
        await fake.wait_for(lambda: len(fake.sockets) == 2, 30)
        # Every event to a random connection, its retry and its message twin to the others;
        # the first mention only to the first instance (its thread goes on at the second).
        chooser = random.Random(19)
        mentions = [fake.user_message(f"question {n}", mention=True) for n in range(8)]
        for event in mentions:
            first = chooser.randrange(2) if event is not mentions[0] else 0
            envelope = await fake.deliver(fake.envelope_body(event), to=first)
            if event is not mentions[0]:
                await fake.deliver(envelope.payload, retry_of=envelope.envelope_id, to=1 - first)
            await fake.deliver(fake.envelope_body(fake.twin(event)), to=chooser.randrange(2))

        def answered(event: dict[str, Any], turns: int = 2) -> bool:
            stored = replies_to(database_url, "slack", f"{CHANNEL}:{event['ts']}")
            return stored == [("user", "complete"), ("assistant", "complete")] * (turns // 2)

        await until(lambda: all(answered(e) for e in mentions), 60, "every mention answered")
        # The first thread goes on through the other instance: the reply sees its history.
        asked = mentions[0]
        (first_reply,) = fake.bot_messages(CHANNEL, asked["ts"])
        follow = fake.user_message("and then?", thread_ts=asked["ts"], mention=True)
        await fake.deliver(fake.envelope_body(follow), to=1)
        await until(lambda: answered(asked, 4), 30, "the follow-up answered")
        prompt = model.prompts()[-1]
        assert "question 0" in prompt and first_reply.text.strip() in prompt
        # Exactly one reply per mention, none lost, none twice.
        shown = {e["ts"]: len(fake.bot_messages(CHANNEL, e["ts"])) for e in mentions}
        assert shown == {e["ts"]: 2 if e is asked else 1 for e in mentions}
        # Each instance lists both, with the same persona hashes (sent with each heartbeat).
        deadline = time.monotonic() + 10
        while True:
            said = [await status(a), await status(b)]
            assert all(s["database"]["ok"] for s in said)
            hashes = [{i["id"]: i.get("personas") for i in s["instances"]} for s in said]
            if hashes[0] == hashes[1] and len(hashes[0]) == 2 and all(hashes[0].values()):
                break
            assert time.monotonic() < deadline, hashes
            await asyncio.sleep(0.2)

        # A database restart while replies are under way: short notices or whole replies,
        # no crash, and both instances answer again without a restart.
        model.delay_s = 0.2
        during = [fake.user_message(f"during {n}", mention=True) for n in range(4)]
        for n, event in enumerate(during):
            await fake.deliver(fake.envelope_body(event), to=n % 2)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(postgres.restart, 1.0)
        model.delay_s = 0.0

        def said(event: dict[str, Any]) -> str:
            """The reply's final text: a whole answer or the short notice."""
            shown = fake.bot_messages(CHANNEL, event["ts"])
            text = shown[0].text if len(shown) == 1 else ""
            whole = ("answer-" in text and "▌" not in text) or "conversation store" in text
            return text if whole else ""

        for event in during:
            await fake.wait_for(lambda e=event: said(e), 30)
        after = [fake.user_message(f"after {n}", mention=True) for n in range(2)]
        for n, event in enumerate(after):
            await fake.deliver(fake.envelope_body(event), to=n)
        for event in after:
            await until(lambda e=event: answered(e), 30, "answered after the restart")
        for server in (a, b):
            assert server.proc.poll() is None
            health = (await get(server, "/healthz")).json()
            assert health["database"]["ok"], health
            log = server.log.read_text()
            assert "Traceback" not in log, log[-3000:]
    finally:
        await instances.stop_all()  # before the fake: its sockets close at once
        await fake.close()


async def test_two_instances_in_slack_http_mode_answer_once_behind_any_balancer(
    instances: Instances, database_url: str
) -> None:
    fake = FakeSlack()
    await fake.start()
    try:
        ports = [free_port(), free_port()]
        servers = [
            await instances.start(
                name,
                SLACK_BOT_TOKEN=BOT_TOKEN,
                SLACK_SIGNING_SECRET=SIGNING_SECRET,
                SLACK_API_URL=fake.api_url,
                SLACK_HTTP_PORT=str(port),
                BOTS_SLACK_HTTP_HOST="127.0.0.1",
                BOTS_SLACK_STREAMING="false",
            )
            for name, port in zip(("a", "b"), ports, strict=True)
        ]
        assert all(s.proc.poll() is None for s in servers)
        urls = [f"http://127.0.0.1:{port}/slack/events" for port in ports]
        chooser = random.Random(7)
        mentions = [fake.user_message(f"question {n}", mention=True) for n in range(6)]
        for n, event in enumerate(mentions):
            first = chooser.randrange(2)
            event_id = f"EvHTTP{n:04d}"
            for url, retry in ((urls[first], 0), (urls[1 - first], 1)):
                code, _, _ = await fake.post_event(url, event, event_id=event_id, retry_num=retry)
                assert code == 200
            code, _, _ = await fake.post_event(urls[chooser.randrange(2)], fake.twin(event))
            assert code == 200

        def answered() -> bool:
            return all(
                replies_to(database_url, "slack", f"{CHANNEL}:{e['ts']}")
                == [("user", "complete"), ("assistant", "complete")]
                for e in mentions
            )

        await until(answered, 60, "every mention answered")
        assert [len(fake.bot_messages(CHANNEL, e["ts"])) for e in mentions] == [1] * 6
    finally:
        await instances.stop_all()  # before the fake: its sockets close at once
        await fake.close()


# ------------------------------------------------------------------------------- Discord


async def test_one_instance_holds_the_discord_shard_and_another_takes_over(
    instances: Instances, database_url: str, model: ModelServer
) -> None:
    fake = FakeDiscord()
    bot = fake.add_bot(DISCORD_TOKEN)
    alice = fake.add_user("alice")
    general = fake.add_channel("general")
    await fake.start()
    try:
        discord = {
            "DISCORD_TOKEN": DISCORD_TOKEN,
            "DISCORD_API_URL": fake.api_url,
            "DISCORD_GATEWAY_URL": fake.gateway_url,
            "BOTS_DISCORD_EDIT_INTERVAL_S": "0.1",
        }
        a = await instances.start("a", **discord)
        b = await instances.start("b", **discord)
        for server in (a, b):  # the adapters start once the API serves
            deadline = time.monotonic() + 20
            while "discord" not in (await status(server))["adapters"]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        assert bot.identifies == 1
        holder, standby = (
            (a, b) if "connected" in (await status(a))["adapters"]["discord"] else (b, a)
        )
        assert (await status(holder))["database"]["leases"] == ["discord-shard:0/1"]
        assert (await status(standby))["adapters"]["discord"].startswith("standby")
        assert (await status(standby))["database"]["leases"] == []
        shown = await asyncio.to_thread(CliRunner().invoke, main, ["status", "--url", standby.url])
        holder_id = (await status(holder))["instance"]
        assert "database postgresql ok" in shown.output, shown.output
        assert f"instance {holder_id}: same personas; leases ['discord-shard:0/1']" in shown.output
        metrics = (await get(holder, "/metrics")).text
        assert 'bots_leases_held{lease="discord-shard:0/1"} 1.0' in metrics
        assert "bots_database_up 1.0" in metrics
        assert "bots_rest_limit_waits_total" in metrics  # Discord REST limits are shared
        assert set((await status(holder))["database"]["rest_limits"]) == {"blocks", "waits"}

        # A long reply; its instance is killed while it streams.
        model.words, model.delay_s = 60, 0.1
        asked = fake.user_message(alice, general, "tell me a long story", mention=bot)
        await fake.wait_for(
            lambda: any("answer-" in str(m.get("content")) for m in fake.messages.values()), 30
        )
        holder.proc.kill()
        holder.proc.wait()
        killed = time.monotonic()
        model.words, model.delay_s = 4, 0.0
        await fake.wait_for(lambda: bot.identifies == 2 and bot.connected.is_set(), 30)
        takeover_s = time.monotonic() - killed
        assert takeover_s < TAKEOVER_BOUND_S
        await until(
            lambda: (
                replies_to(database_url, "discord", asked["id"])
                == [("user", "complete"), ("assistant", "interrupted")]
            ),
            10,
            "the killed instance's reply marked interrupted",
        )
        again = fake.user_message(alice, general, "are you there?", mention=bot)
        await until(
            lambda: (
                replies_to(database_url, "discord", again["id"])[-1:] == [("assistant", "complete")]
            ),
            30,
            "the new holder answers",
        )
        # The interrupted message is not answered a second time.
        assert replies_to(database_url, "discord", asked["id"])[:2] == [
            ("user", "complete"),
            ("assistant", "interrupted"),
        ]
        assert (await status(standby))["database"]["leases"] == ["discord-shard:0/1"]
        print(f"takeover after kill -9: {takeover_s:.2f}s")
    finally:
        await instances.stop_all()  # before the fake: its sockets close at once
        await fake.close()


async def test_two_instances_share_the_discord_shards_out(instances: Instances) -> None:
    fake = FakeDiscord()
    bot = fake.add_bot(DISCORD_TOKEN)
    await fake.start()
    try:
        discord = {
            "DISCORD_TOKEN": DISCORD_TOKEN,
            "DISCORD_API_URL": fake.api_url,
            "DISCORD_GATEWAY_URL": fake.gateway_url,
            "BOTS_DISCORD_SHARD_COUNT": "2",
        }
        a = await instances.start("a", **discord)
        # Alone, it holds both (the adapters connect once the API serves).
        await fake.wait_for(lambda: sorted(bot.shards) == [(0, 2), (1, 2)], 20)
        b = await instances.start("b", **discord)

        async def leases() -> list[list[str]]:
            return [(await status(s))["database"]["leases"] for s in (a, b)]

        deadline = time.monotonic() + 20
        while await leases() != [["discord-shard:0/2"], ["discord-shard:1/2"]]:
            assert time.monotonic() < deadline, await leases()
            await asyncio.sleep(0.2)
        # Shard 1 was handed from a to b: identified once more, as shard 1 (the lease is held
        # a moment before the IDENTIFY).
        await fake.wait_for(lambda: bot.shards[2:] == [(1, 2)], 10)
        b.proc.kill()
        b.proc.wait()
        both = ["discord-shard:0/2", "discord-shard:1/2"]
        while (held := (await status(a))["database"]["leases"]) != both:
            assert time.monotonic() < deadline + 20, held
            await asyncio.sleep(0.2)
        await fake.wait_for(lambda: bot.shards[3:] == [(1, 2)], 10)
        assert len(bot.shards) == 4
    finally:
        await instances.stop_all()  # before the fake: its sockets close at once
        await fake.close()
