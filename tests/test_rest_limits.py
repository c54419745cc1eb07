"""Discord REST rate limits shared by instances on one token through PostgreSQL: a bucket (or
the global limit) one instance was told is spent holds the other instance's requests back until
it expires, instead of each instance spending it and being given its own 429. Real discord.py
clients, the loopback fake Discord (which answers 429 to every request while a bucket is spent)
and a real PostgreSQL; without the shared trace the fake sees the other instance's request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import discord
import pytest
import yarl

from bots.adapters.discord.client import point_client_at
from bots.adapters.discord.ratelimits import SharedRestLimits, route_of
from bots.store.postgres import PostgresStore
from tests.fakes.discord import FakeDiscord
from tests.fakes.waiting import until

TOKEN = "fake-bot-token.for-rest-limits"
SPENT_S = 1.5

Instance = Callable[[bool], Awaitable[tuple[discord.Client, PostgresStore]]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord()
    await server.start()
    server.add_bot(TOKEN)
    point_client_at(server.api_url, server.gateway_url)
    yield server
    await server.close()


@pytest.fixture
async def instance(database_url: str) -> AsyncIterator[Instance]:
    """An instance: its own store on the shared database and a logged-in client (REST only),
    sharing rate limits through the store unless `shared` is False (as on SQLite)."""
    opened: list[tuple[discord.Client, PostgresStore]] = []

    async def start(shared: bool = True) -> tuple[discord.Client, PostgresStore]:
        store = PostgresStore(database_url, f"rest-{len(opened)}")
        await store.open()
        await until(lambda: store.connected, what="the store connected")
        options: dict[str, Any] = {}
        if shared:
            options["http_trace"] = SharedRestLimits(store.rest_limits).trace()
        client = discord.Client(intents=discord.Intents.none(), **options)
        await client.login(TOKEN)
        opened.append((client, store))
        return client, store

    yield start
    for client, store in opened:
        await client.close()
        await store.close()


def sent(fake: FakeDiscord, content: str) -> list[Any]:
    return [c for c in fake.calls if c.method == "POST" and c.content == content]


async def test_a_spent_bucket_holds_back_the_other_instance_until_it_expires(
    fake: FakeDiscord, instance: Instance
) -> None:
    channel = int(fake.add_channel("general"))
    (a, store_a), (b, store_b) = await instance(True), await instance(True)
    bucket = fake.spend("POST", rf"^/channels/{channel}/messages$", SPENT_S)

    first = a.loop.create_task(a.get_partial_messageable(channel).send("from A"))
    await until(lambda: store_a.rest_limits.blocks, what="A shared the 429")
    await b.get_partial_messageable(channel).send("from B")
    await first

    from_b = sent(fake, "from B")
    assert [c.status for c in from_b] == [200]  # never sent into the spent bucket
    assert bucket.until is not None and from_b[0].at >= bucket.until
    assert store_b.rest_limits.waits >= 1
    assert [c.status for c in sent(fake, "from A")] == [429, 200]


async def test_without_sharing_the_other_instance_spends_the_bucket_too(
    fake: FakeDiscord, instance: Instance
) -> None:
    """The control: what the shared trace prevents is observable in the fake."""
    channel = int(fake.add_channel("general"))
    (a, store_a), (b, _) = await instance(True), await instance(False)
    fake.spend("POST", rf"^/channels/{channel}/messages$", SPENT_S)

    first = a.loop.create_task(a.get_partial_messageable(channel).send("from A"))
    await until(lambda: store_a.rest_limits.blocks, what="A shared the 429")
    await b.get_partial_messageable(channel).send("from B")
    await first

    assert sent(fake, "from B")[0].status == 429


async def test_the_global_limit_holds_back_every_route_of_the_other_instance(
    fake: FakeDiscord, instance: Instance
) -> None:
    busy, quiet = int(fake.add_channel("busy")), int(fake.add_channel("quiet"))
    (a, store_a), (b, _) = await instance(True), await instance(True)
    limit = fake.spend("POST", rf"^/channels/{busy}/messages$", SPENT_S, is_global=True)

    first = a.loop.create_task(a.get_partial_messageable(busy).send("from A"))
    await until(lambda: store_a.rest_limits.blocks, what="A shared the global 429")
    await b.get_partial_messageable(quiet).send("from B")
    await first

    from_b = sent(fake, "from B")
    assert [c.status for c in from_b] == [200]
    assert limit.until is not None and from_b[0].at >= limit.until


def test_routes_are_keyed_as_discord_buckets_and_never_carry_tokens() -> None:
    api = "http://127.0.0.1:9/api/v10"

    def key(method: str, path: str) -> str | None:
        return route_of(method, yarl.URL(f"{api}{path}"), api)

    assert key("post", "/channels/12/messages") == "POST /channels/12/messages"
    assert key("PATCH", "/channels/12/messages/34") == "PATCH /channels/12/messages/{id}"
    assert key("POST", "/webhooks/56/s3cr3t-t0ken?wait=true") == "POST /webhooks/56/{token}"
    assert (
        key("POST", "/interactions/78/s3cr3t-t0ken/callback")
        == "POST /interactions/{id}/{token}/callback"
    )
    assert route_of("GET", yarl.URL("ws://127.0.0.1:9/gateway"), api) is None
