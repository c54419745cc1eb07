"""The conversation store seam on both back ends (SQLite and a real PostgreSQL), and what only
several instances on PostgreSQL share: migrations run once, budgets, conversation locks, leases,
the sweep of a dead instance's replies, the copy from SQLite and a database restart."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bots.cli import main
from bots.store.base import ConversationStore, StoreUnavailable
from bots.store.sqlite import SqliteStore
from bots.store.sqlite_file import SqliteFile

StoreMaker = Callable[[], ConversationStore]


@pytest.fixture(params=["sqlite", "postgresql"])
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], Any]]:
    """Opens stores on one database of the parametrized back end; all closed after."""
    opened: list[ConversationStore] = []
    if request.param == "postgresql":
        from bots.store.postgres import PostgresStore

        url = request.getfixturevalue("database_url")

        def make() -> ConversationStore:
            return PostgresStore(url, f"test-{len(opened)}")
    else:
        path = tmp_path / "conversations.sqlite3"

        def make() -> ConversationStore:
            return SqliteStore(path, f"test-{len(opened)}")

    async def open_one() -> ConversationStore:
        store = make()
        await store.open()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


async def test_turns_messages_feedback_and_events_round_trip(stores: Any) -> None:
    store: ConversationStore = await stores()
    conversation = await store.conversation_id("slack", "C1:1.0")
    assert await store.conversation_id("slack", "C1:1.0") == conversation
    asked = await store.add_turn(
        conversation, "user", "How many days?", "librarian", user_id="U1", platform_message_id="1.0"
    )
    reply = await store.add_turn(
        conversation, "assistant", "", "librarian", status="pending", sources=[{"title": "h"}]
    )
    assert [t.id for t in await store.history(conversation)] == [asked]  # pending not seen
    await store.finish_turn(reply, "25 days.", "complete", [{"title": "handbook"}])
    await store.set_message_id(reply, "1.1")
    shown = await store.turn_by_message("slack", "1.1")
    assert shown is not None and shown.id == reply and shown.content == "25 days."
    assert shown.sources == ({"title": "handbook"},)
    assert await store.turn_by_message("discord", "1.1") is None
    assert await store.place_of(conversation) == ("slack", "C1:1.0")
    await store.add_feedback(reply, "U2", 1)
    await store.add_feedback(reply, "U2", -1)  # a later reaction replaces the earlier
    (judged,) = await store.feedback("librarian")
    assert (judged.value, judged.question, judged.answer) == (-1, "How many days?", "25 days.")
    await store.remove_feedback(reply, "U2", -1)
    assert await store.feedback() == []
    assert await store.forget(conversation) == 2
    assert await store.history(conversation) == []
    assert [t.role for t in await store.turns(conversation)] == ["user", "assistant"]
    assert await store.first_sighting("slack:Ev1", 60.0)
    assert not await store.first_sighting("slack:Ev1", 60.0)
    assert await store.first_sighting("slack:Ev1", 0.0)  # expired: a new sighting


async def test_rate_budget_is_one_sliding_window(stores: Any) -> None:
    first: ConversationStore = await stores()
    second = await stores() if first.backend == "postgresql" else first
    assert await first.take_budget("slack:U1", 2, 60.0) == 0.0
    assert await second.take_budget("slack:U1", 2, 60.0) == 0.0
    wait = await first.take_budget("slack:U1", 2, 60.0)
    assert 0 < wait <= 60.0
    assert await second.take_budget("slack:U2", 2, 60.0) == 0.0  # another user's budget
    assert await second.take_budget("slack:U3", 1, 0.2) == 0.0
    await asyncio.sleep(0.3)
    assert await first.take_budget("slack:U3", 1, 0.2) == 0.0  # the window has passed


async def test_migrations_run_once_however_many_instances_start(database_url: str) -> None:
    import psycopg

    from bots.store.migrations import MIGRATIONS
    from bots.store.postgres import PostgresStore

    many = [PostgresStore(database_url, f"i{n}") for n in range(6)]
    await asyncio.gather(*(s.open() for s in many))
    try:
        ids = await asyncio.gather(*(s.conversation_id("slack", "C:1") for s in many))
        assert len(set(ids)) == 1
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            cursor = await conn.execute("SELECT version FROM schema_migrations ORDER BY version")
            assert [r[0] for r in await cursor.fetchall()] == list(range(1, len(MIGRATIONS) + 1))
    finally:
        await asyncio.gather(*(s.close() for s in many))


async def test_a_conversation_is_held_by_one_instance_at_a_time(database_url: str) -> None:
    from bots.store.postgres import PostgresStore

    a, b = PostgresStore(database_url, "a"), PostgresStore(database_url, "b")
    await a.open()
    await b.open()
    try:
        conversation = await a.conversation_id("discord", "thread:1")
        held = await a.lock_conversation(conversation, 1.0)
        assert held is not None
        assert await b.lock_conversation(conversation, 0.2) is None
        other = await b.lock_conversation(await b.conversation_id("discord", "thread:2"), 0.2)
        assert other is not None
        waiting = asyncio.create_task(b.lock_conversation(conversation, 5.0))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await held.release()
        taken = await asyncio.wait_for(waiting, 5.0)
        assert taken is not None
        await taken.release()
        await other.release()
    finally:
        await a.close()
        await b.close()


HOLDER = """
import asyncio, sys
from bots.store.postgres import PostgresStore

async def main():
    store = PostgresStore(sys.argv[1], "holder")
    await store.open()
    assert await store.try_lease("discord-shard:0") is not None
    conversation = await store.conversation_id("discord", "thread:9")
    turn = await store.add_turn(conversation, "assistant", "", "p", status="pending")
    print(conversation, turn, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_a_lease_passes_to_another_instance_when_its_holder_dies(database_url: str) -> None:
    from bots.store.postgres import PostgresStore

    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, database_url, stdout=asyncio.subprocess.PIPE
    )
    b = PostgresStore(database_url, "b")
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), 30)
        conversation, pending = (int(n) for n in line.split())
        await b.open()
        assert await b.try_lease("discord-shard:0") is None
        shard_1 = await b.try_lease("discord-shard:1")
        assert shard_1 is not None and not shard_1.lost
        assert await b.try_lease("discord-shard:1") is None  # not twice, even to its holder
        holder.kill()  # kill -9 mid-reply
        await holder.wait()
        killed = time.monotonic()
        while (taken := await b.try_lease("discord-shard:0")) is None:
            assert time.monotonic() - killed < 5.0, "the lease was not freed"
            await asyncio.sleep(0.05)

        async def status() -> str:
            (turn,) = [t for t in await b.turns(conversation) if t.id == pending]
            return turn.status

        while await status() != "interrupted":
            assert time.monotonic() - killed < 5.0, "the dead instance's reply stayed pending"
            await asyncio.sleep(0.1)
        await taken.release()
        await shard_1.release()
        assert (await b.try_lease("discord-shard:1")) is not None  # released: free again
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
        await b.close()


async def test_copy_from_sqlite_keeps_every_row(tmp_path: Path, database_url: str) -> None:
    from bots.store.postgres import PostgresStore

    path = tmp_path / "data" / "conversations.sqlite3"
    file = SqliteFile(path)
    conversation = file.conversation_id("discord", "thread:1")
    asked = file.add_turn(conversation, "user", "Hi ✓", "p", user_id="U1", platform_message_id="7")
    reply = file.add_turn(conversation, "assistant", "Hello", "p", sources=[{"title": "t"}])
    file.set_message_id(reply, "8")
    file.add_feedback(reply, "U1", 1)
    pending = file.add_turn(conversation, "assistant", "half", "p", status="pending")
    file.forget(conversation)
    assert file.first_sighting("discord:message:7", 3600)
    before = file.turns(conversation)
    file.close()
    runner = CliRunner()
    env = {"BOTS_DATABASE_URL": database_url}
    args = ["--data-dir", str(tmp_path / "data"), "db", "copy"]
    done = await asyncio.to_thread(runner.invoke, main, args, env=env)
    assert done.exit_code == 0, done.output
    assert "conversations 1, turns 3, feedback 1, seen_events 1" in done.output
    store = PostgresStore(database_url, "after")
    await store.open()
    try:
        after = await store.turns(conversation)
        assert [t.status for t in after] == ["complete", "complete", "interrupted"]
        assert [(t.id, t.content, t.sources, t.platform_message_id) for t in after] == [
            (t.id, t.content, t.sources, t.platform_message_id) for t in before
        ]
        assert after[0].id == asked and after[2].id == pending
        assert (await store.turn_by_message("discord", "8")).id == reply  # type: ignore[union-attr]
        assert [f.value for f in await store.feedback("p")] == [1]
        assert await store.history(conversation) == []  # forgotten stays forgotten
        assert not await store.first_sighting("discord:message:7", 3600)
        # New rows continue after the copied ids.
        assert await store.add_turn(conversation, "user", "next", "p") > pending
    finally:
        await store.close()
    again = await asyncio.to_thread(runner.invoke, main, args, env=env)
    assert again.exit_code != 0 and "copy into an empty database" in again.output
    migrated = await asyncio.to_thread(runner.invoke, main, ["db", "migrate"], env=env)
    assert migrated.exit_code == 0 and "0 migrations applied" in migrated.output


async def test_a_database_restart_gives_short_errors_and_recovers(postgres: Any) -> None:
    from bots.store.postgres import PostgresStore

    store = PostgresStore(postgres.new_database(), "outage")
    await store.open()
    try:
        conversation = await store.conversation_id("slack", "C:1")
        assert (await store.health()).ok
        await asyncio.to_thread(postgres.stop)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as failed:
            await store.history(conversation)
        assert time.monotonic() - started < 5.0
        assert "database" in str(failed.value) and "\n" not in str(failed.value)
        assert not (await store.health()).ok
        await asyncio.to_thread(postgres.start)
        deadline = time.monotonic() + 15.0
        while True:
            try:
                await store.add_turn(conversation, "user", "back", "p")
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the store did not recover"
                await asyncio.sleep(0.2)
        assert [t.content for t in await store.history(conversation)] == ["back"]
        while not (await store.health()).ok:
            assert time.monotonic() < deadline, "the keeper did not reconnect"
            await asyncio.sleep(0.2)
    finally:
        await store.close()


async def test_a_schema_newer_than_this_bots_is_refused(database_url: str) -> None:
    import psycopg

    from bots.store.postgres import PostgresStore

    first = PostgresStore(database_url, "first")
    await first.open()
    await first.close()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("INSERT INTO schema_migrations (version) VALUES (99)")
    newer = PostgresStore(database_url, "older-bots")
    with pytest.raises(StoreUnavailable, match="version 99, newer than this bots"):
        await newer.open()
