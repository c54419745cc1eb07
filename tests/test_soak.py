"""Soak: one real `bots serve` (default engine, real model) answering many messages over the fake
Discord, the fake Slack and its HTTP API, to random personas, while persona files are rewritten
underneath (valid edits, and now and then a broken save fixed by the next one).

Checked at the end: every message got exactly one reply (none lost, none doubled) from the persona
it was addressed to and none of them is an error notice; the store holds one finished assistant
turn per remembered message; the server is healthy, every persona loaded without errors, and it
stops cleanly. The resident memory of the server and its model worker is sampled as the messages
are answered; growth after warm-up is reported and bounded.

HTTP counts as answered when the request got a 200 with a non-empty completion from the persona
asked (streamed: ending in `[DONE]` without an error event). A documented 503 `server_busy` would
be a clear answer too, but the driver keeps fewer messages in flight than the engine's queue
holds, so any non-200 here is a failure.

Short by default (SHORT_MESSAGES); `pytest --soak` or `BOTS_SOAK_MESSAGES=2000` runs the full one.
The report is printed (`pytest -s`) and written to `<tmp>/bots-soak-<N>.txt`.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import sqlite3
import string
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fakes.discord import FakeDiscord
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack
from tests.serve_process import ONE_THREAD, ServerProcess, start_server
from tests.soak_driver import (
    PLATFORMS,
    DiscordPlace,
    DiscordSide,
    HttpSide,
    MemorySampler,
    PersonaEditor,
    Platform,
    Side,
    SlackPlace,
    SlackSide,
    SoakPersona,
    SoakReport,
    drive,
    plan_messages,
)

REPO = Path(__file__).resolve().parent.parent
SHORT_MESSAGES = 50
FULL_MESSAGES = 2000
IN_FLIGHT = 6  # below the engine's default queue (32) and parallel slots (8): no busy answers
SEED = 20261125
# Short replies keep the soak about the plumbing, not the model's speed.
MAX_TOKENS = 16
# A few document chunks per question: retrieval and citations still at work, prompts cheap.
MAX_KNOWLEDGE_TOKENS = 200
EDIT_INTERVAL_S = 1.0
WARM_UP_SHARE = 0.1  # memory growth is measured from this share of the messages on
MEMORY_SAMPLES = 50
# Growth of server + model worker RSS from warm-up to the end. Measured: 11 MB over the short run
# (10 MB over 100 messages), 8 MB over 2,000 messages (the worker's KV park is reserved at start;
# discord.py caches at most 1,000 messages). Generous, for noise; a leak of 30 KB per message
# fails the full run.
RSS_GROWTH_LIMIT_MB = 64.0
SETTLE_S = 2.0  # after the model is idle, for late (duplicate) replies to reach the fakes
READY_TIMEOUT_S = 60.0
SOAK_TIMEOUT_S = 3600
DISCORD_TOKEN = "soak-discord-token.0123456789"
SLACK_PORT = re.compile(r"slack: connected \(HTTP port (\d+)\)")
SLACK_DECK = "C0DECK001"
# Left out of the copies: `bots serve` re-runs a persona's evals on every save of it, which with
# a save a second keeps one engine slot busy with uncached prompts and doubles the model's work;
# evals under edits have their own tests (tests/test_evals_watch.py).
EVALS = "evals.yaml"

EXTRA_PERSONAS = {
    "pirate": (
        "name: Pete\ndescription: Talks like a pirate.\nmodel: {temperature: 0.7}\n",
        "You are Pete, a pirate. Always answer like a pirate, in one or two sentences.",
        ("Where is your ship?", "What do you eat at sea?", "Tell me about the wind."),
    ),
    "deckhand": (
        "name: Dex\ndescription: A deckhand bound to the deck channels.\n"
        'discord: {channels: ["$discord"]}\nslack: {channels: [$slack]}\n',
        "You are Dex, a deckhand. Answer briefly and practically.",
        ("How do I tie a bowline?", "Is the deck clean?", "When do we sail?"),
    ),
}
GENERIC_QUESTIONS = ("Who are you?", "Who won the football match yesterday?")


def soak_messages(config: pytest.Config) -> int:
    """2,000 with `--soak`; else BOTS_SOAK_MESSAGES; else the short default."""
    if config.getoption("--soak"):
        return FULL_MESSAGES
    return int(os.environ.get("BOTS_SOAK_MESSAGES", SHORT_MESSAGES))


def build_project(root: Path, discord_deck: str) -> list[SoakPersona]:
    """The repo's personas and libraries (replies shortened) plus a pirate and a deckhand bound
    to a Discord and a Slack channel; every persona.md written in its first revision."""
    shutil.copytree(REPO / "knowledge", root / "knowledge")
    shutil.copytree(REPO / "personas", root / "personas", ignore=shutil.ignore_patterns(EVALS))
    personas = []
    for folder in sorted(p for p in (root / "personas").iterdir() if p.is_dir()):
        _, front, body = (folder / "persona.md").read_text(encoding="utf-8").split("---\n", 2)
        settings: dict[str, Any] = yaml.safe_load(front) or {}
        front = re.sub(r"max_tokens: *\d+", f"max_tokens: {MAX_TOKENS}", front)
        questions = tuple(settings.get("starters") or ()) + GENERIC_QUESTIONS
        name = str(settings.get("name") or folder.name)
        personas.append(SoakPersona(folder.name, name, front, body.strip(), questions))
    for persona_id, (front, body, questions) in EXTRA_PERSONAS.items():
        front = string.Template(front).substitute(discord=discord_deck, slack=SLACK_DECK)
        name = str(yaml.safe_load(front)["name"])
        personas.append(SoakPersona(persona_id, name, front, body, questions + GENERIC_QUESTIONS))
        (root / "personas" / persona_id).mkdir()
    for persona in personas:
        path = root / "personas" / persona.id / "persona.md"
        path.write_text(persona.text(0, "Keep it short."), encoding="utf-8")
    return personas


@dataclass
class World:
    """The fakes, the server and the three sides the driver talks through."""

    server: ServerProcess
    client: httpx.AsyncClient
    sides: dict[Platform, Side]
    personas: list[SoakPersona]
    project: Path


@asynccontextmanager
async def soak_world(root: Path) -> AsyncIterator[World]:
    """Fake Discord and Slack, a project, and `bots serve` with all three adapters connected."""
    discord, slack = FakeDiscord(), FakeSlack(streaming=True)
    await discord.start()
    await slack.start()
    bot = discord.add_bot(DISCORD_TOKEN)
    alice, bob, carol = (discord.add_user(name) for name in ("alice", "bob", "carol"))
    discord_places = {
        "general": DiscordPlace(discord.add_channel("general"), alice, mention=True),
        "random": DiscordPlace(discord.add_channel("random"), bob, mention=True),
        "dm-alice": DiscordPlace(discord.dm_channel(alice, bot), alice, mention=False, dm=True),
        "dm-bob": DiscordPlace(discord.dm_channel(bob, bot), bob, mention=False, dm=True),
    }
    deck = DiscordPlace(discord.add_channel("deck"), carol, mention=False, bound_to="deckhand")
    discord_places["deck"] = deck
    personas = build_project(root, deck.channel_id)
    by_id = {p.id: p for p in personas}
    env = {
        **ONE_THREAD,
        "BOTS_MODEL_MAX_TOKENS": str(MAX_TOKENS),
        "BOTS_RETRIEVAL_MAX_KNOWLEDGE_TOKENS": str(MAX_KNOWLEDGE_TOKENS),
        # Rate limits lifted (0: none): a few users send far more than people do, and every
        # HTTP request comes from one address.
        "BOTS_POLICY_RATE_LIMIT_MESSAGES": "0",
        "BOTS_SERVER_MAX_IN_FLIGHT_PER_CLIENT": "0",
        "BOTS_SERVER_RATE_LIMIT_REQUESTS": "0",
        "DISCORD_TOKEN": DISCORD_TOKEN,
        "DISCORD_API_URL": discord.api_url,
        "DISCORD_GATEWAY_URL": discord.gateway_url,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.api_url,
        "SLACK_HTTP_PORT": "0",
        "BOTS_SLACK_HTTP_HOST": "127.0.0.1",
    }
    # In a thread: the fakes must keep answering the server while it starts.
    server = await asyncio.to_thread(start_server, root, env=env)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=150.0) as client:
            events_url = await _adapters_connected(client, server)
            slack_places = {
                "channel": SlackPlace("C0CHAN001", "U0USER001", mention=True),
                "dm-1": SlackPlace("D0DM00001", "U0USER001", mention=False),
                "dm-2": SlackPlace("D0DM00002", "U0USER003", mention=False),
                "deck": SlackPlace(SLACK_DECK, "U0USER002", mention=False, bound_to="deckhand"),
            }
            sides: dict[Platform, Side] = {
                "discord": DiscordSide(discord, bot, discord_places, by_id),
                "slack": SlackSide(slack, events_url, slack_places, by_id),
                "http": HttpSide(client, ("soak-ann", "soak-ben", ""), by_id),
            }
            yield World(server, client, sides, personas, root)
    finally:
        await asyncio.to_thread(server.stop)
        await slack.close()
        await discord.close()


async def _adapters_connected(client: httpx.AsyncClient, server: ServerProcess) -> str:
    """Wait until /status shows Discord and Slack connected; Slack's events URL."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        adapters = (await client.get("/status")).json()["adapters"]
        port = SLACK_PORT.search(server.log.read_text(errors="replace"))
        if adapters.get("discord") == "connected" and adapters.get("slack") == "connected" and port:
            return f"http://127.0.0.1:{port.group(1)}/slack/events"
        assert server.proc.poll() is None, server.log.read_text()
        assert time.monotonic() < deadline, f"adapters not connected: {adapters}"
        await asyncio.sleep(0.2)


async def _settled(client: httpx.AsyncClient) -> None:
    """Wait until the model has nothing left to do (a doubled reply would still be generating),
    then SETTLE_S more for the last messages to reach the fakes."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        engine = (await client.get("/status")).json()["engine"]
        if engine["active"] == 0 and engine["queue_depth"] == 0:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(SETTLE_S)


async def _final_status(client: httpx.AsyncClient) -> tuple[int, list[str]]:
    """Persona reloads counted, and persona errors once the last (valid) saves are loaded."""
    deadline = time.monotonic() + 20.0
    while True:
        personas = (await client.get("/status")).json()["personas"]
        errors = [f"{p['id']}: {e}" for p in personas for e in p["errors"]]
        errors += [f"{p['id']}: not loaded" for p in personas if not p["loaded"]]
        if not errors or time.monotonic() > deadline:
            return sum(int(p["reloads"]) for p in personas), errors
        await asyncio.sleep(0.2)


def stored_assistant_turns(db: Path) -> dict[str, dict[str, int]]:
    """Assistant turns per platform and status, read from the server's store."""
    counts: dict[str, dict[str, int]] = {}
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT c.platform, t.status, COUNT(*) FROM turns t "
            "JOIN conversations c ON c.id = t.conversation_id "
            "WHERE t.role = 'assistant' GROUP BY c.platform, t.status"
        )
        for platform, status, count in rows:
            counts.setdefault(platform, {})[status] = count
    return counts


@pytest.mark.soak
@pytest.mark.timeout(SOAK_TIMEOUT_S)
async def test_soak_every_message_answered_once_while_personas_change(
    tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    count = soak_messages(pytestconfig)
    rng = random.Random(SEED)
    async with soak_world(tmp_path) as world:
        client = world.client
        plans = plan_messages(count, world.sides, world.personas, rng)
        sampler = MemorySampler(
            world.server.proc.pid, world.server.worker_pids, max(1, count // MEMORY_SAMPLES)
        )
        sampler.sample(0)
        editor = PersonaEditor(
            world.project / "personas", world.personas, random.Random(SEED + 1), EDIT_INTERVAL_S
        )
        stop_editing = asyncio.Event()
        editing = asyncio.create_task(editor.run(stop_editing))
        started = time.monotonic()
        try:
            outcomes = await drive(plans, world.sides, IN_FLIGHT, sampler.on_done)
        finally:
            stop_editing.set()
            await editing
        duration = time.monotonic() - started
        if sampler.samples[-1].done != count:
            sampler.sample(count)
        await _settled(client)
        tallies = {p: world.sides[p].tally() for p in PLATFORMS}
        reloads, persona_errors = await _final_status(client)
        health = await client.get("/healthz")
        engine = (await client.get("/status")).json()["engine"]
        alive = world.server.proc.poll() is None
    exit_code = world.server.proc.returncode
    stored = stored_assistant_turns(tmp_path / "data" / "conversations.sqlite3")
    report = SoakReport(
        messages=count,
        in_flight=IN_FLIGHT,
        seed=SEED,
        duration_s=duration,
        per_platform=tallies,
        outcomes=outcomes,
        edits_valid=editor.valid,
        edits_invalid=editor.invalid,
        reloads=reloads,
        samples=sampler.samples,
        warm_at=int(count * WARM_UP_SHARE),
        health=f"/healthz {health.status_code}, engine healthy={engine['healthy']}, "
        f"process alive={alive}, exit status {exit_code}",
        persona_errors=persona_errors,
        stored=stored,
    )
    text = report.text()
    print("\n" + text)
    (Path(tempfile.gettempdir()) / f"bots-soak-{count}.txt").write_text(text + "\n")

    assert len(outcomes) == count
    for platform, tally in tallies.items():
        assert tally.lost == [], f"{platform}: lost replies\n{text}"
        assert tally.duplicated == [], f"{platform}: duplicated replies\n{text}"
        assert tally.wrong_persona == [], f"{platform}: wrong persona\n{text}"
        assert tally.error_replies == [], f"{platform}: error replies\n{text}"
        assert tally.stray == 0, f"{platform}: bot messages answering nothing\n{text}"
    assert sum(t.sent for t in tallies.values()) == count
    assert [o for o in outcomes if not o.ok] == []
    remembered = {
        "discord": tallies["discord"].sent,
        "slack": tallies["slack"].sent,
        "http": sum(1 for p in plans if p.platform == "http" and p.place),
    }
    assert stored == {p: {"complete": n} for p, n in remembered.items() if n}, text
    assert alive and health.status_code == 200 and engine["healthy"], text
    assert exit_code == 0, text
    assert persona_errors == [], text
    assert reloads > 0 and editor.valid > 0, text
    assert report.growth_after_warm_mb < RSS_GROWTH_LIMIT_MB, text
