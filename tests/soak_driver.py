"""The soak driver: many messages over the fake Discord, the fake Slack and the HTTP API against one
`bots serve`, with persona files rewritten underneath, then a count of the replies each message got.

Every message waits for its own reply (bounded in count and time); the authoritative count comes
afterwards from what the fakes received: for Discord the bot messages between one user message and
the next in the same channel (the driver sends one message at a time per channel, so a late or
doubled reply shows up there), for Slack the bot messages in the thread of each message (replies
are threaded under the message they answer), for HTTP the response of each request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

from bots.adapters.render import CURSOR
from bots.adapters.slack.reply import PLACEHOLDER
from bots.chat.notices import CUT_SHORT, FAILED, INTERRUPTED, NO_PERSONAS
from tests.fakes.discord import BotAccount, FakeDiscord
from tests.fakes.slack import BOT_ID, FakeSlack, Message

Platform = Literal["discord", "slack", "http"]
PLATFORMS: tuple[Platform, ...] = ("discord", "slack", "http")

# Messages per conversation that keeps history (a Discord DM, an HTTP `user`): then the next
# user starts a new one, so prompts stay short of the window as in a real mix of conversations.
CONVERSATION_MESSAGES = 6
# A reply that has not arrived this long after its message is counted as lost.
REPLY_TIMEOUT_S = 120.0
# What users may see instead of an answer; any of them in a reply counts as an error reply.
ERROR_NOTICES = (
    FAILED,
    NO_PERSONAS,
    INTERRUPTED,
    CUT_SHORT,
    "I'm busy with other questions",
)
SLACK_ERROR_REACTIONS = frozenset({"x", "hourglass_flowing_sand"})
# Valid edits append one of these (and a revision number, so that every save changes the file).
STYLE_LINES = (
    "Answer in one short sentence.",
    "Be friendly and brief.",
    "Use simple words.",
    "Mention the weather once.",
    "End with a short question.",
    "Speak calmly.",
)
InvalidKind = Literal["unknown key", "broken YAML", "empty body"]
INVALID_KINDS: tuple[InvalidKind, ...] = ("unknown key", "broken YAML", "empty body")
# Share of saves that break the file (the next save of that persona fixes it).
INVALID_EDIT_SHARE = 0.1


@dataclass(frozen=True)
class SoakPersona:
    """A persona of the soak: its id, display name, persona.md front matter and body, and the
    questions users put to it."""

    id: str
    name: str
    front: str
    instructions: str
    questions: tuple[str, ...]

    def text(self, revision: int, style: str) -> str:
        """A valid persona.md: the same settings, instructions ending with a new line."""
        return f"---\n{self.front}---\n{self.instructions}\n{style} (revision {revision})\n"


@dataclass(frozen=True)
class Plan:
    """One message to send: where, to which persona, what; `variant` is per platform (Slack:
    also deliver the `message` twin of a mention; HTTP: stream the reply)."""

    index: int
    platform: Platform
    persona: str
    question: str
    place: str
    variant: bool


@dataclass(frozen=True)
class Outcome:
    """What the sender saw: the reply arrived (`ok`) or why not, and how long it took."""

    plan: Plan
    ok: bool
    detail: str
    seconds: float


@dataclass
class Tally:
    """Replies counted per message on one platform, from what the platform received."""

    sent: int = 0
    answered: int = 0
    lost: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)
    wrong_persona: list[int] = field(default_factory=list)
    error_replies: list[str] = field(default_factory=list)
    stray: int = 0  # bot messages that answer none of the messages sent

    def count(self, index: int, replies: int, persona_ok: bool, errors: Iterable[str]) -> None:
        """Record one message's replies."""
        self.sent += 1
        if replies == 0:
            self.lost.append(index)
        elif replies > 1:
            self.duplicated.append(index)
        else:
            self.answered += 1
        if replies and not persona_ok:
            self.wrong_persona.append(index)
        self.error_replies += [f"#{index}: {e}" for e in errors]


class Side(Protocol):
    """One platform the driver talks to."""

    def places(self, persona: SoakPersona) -> Sequence[str]:
        """Where a message to `persona` may go."""

    async def send(self, plan: Plan) -> Outcome:
        """Send the message and wait for its reply to be complete."""

    def tally(self) -> Tally:
        """Count the replies every sent message got (after the run has settled)."""


def error_in(text: str) -> list[str]:
    """The error notices a reply carries."""
    return [notice for notice in ERROR_NOTICES if notice in text]


def addressed(persona: SoakPersona, question: str, named: bool) -> str:
    return f"{persona.name}: {question}" if named else question


# --------------------------------------------------------------------------- Discord


@dataclass(frozen=True)
class DiscordPlace:
    channel_id: str
    user: dict[str, Any]
    mention: bool
    bound_to: str = ""  # the persona bound to the channel (no mention, no name needed)
    dm: bool = False


class DiscordSide:
    """Users posting in guild channels (mentioning the bot, or in a persona's bound channel) and
    in DMs; one message at a time per channel."""

    def __init__(
        self,
        fake: FakeDiscord,
        bot: BotAccount,
        places: dict[str, DiscordPlace],
        personas: dict[str, SoakPersona],
    ) -> None:
        self.fake = fake
        self.bot = bot
        self._places = places
        self.personas = personas
        self._locks = {name: asyncio.Lock() for name in places}
        self._messages = dict.fromkeys(places, 0)
        self.sent: dict[str, tuple[int, str]] = {}  # user message id -> (index, persona id)

    def places(self, persona: SoakPersona) -> list[str]:
        return [name for name, p in self._places.items() if p.bound_to in ("", persona.id)]

    async def send(self, plan: Plan) -> Outcome:
        persona = self.personas[plan.persona]
        async with self._locks[plan.place]:
            place = self._place(plan.place)
            text = addressed(persona, plan.question, not place.bound_to)
            started = time.monotonic()
            message = self.fake.user_message(
                place.user, place.channel_id, text, mention=self.bot if place.mention else None
            )
            self.sent[message["id"]] = (plan.index, plan.persona)
            try:
                await self.fake.wait_for(
                    lambda: self._complete(place.channel_id, message["id"]), REPLY_TIMEOUT_S
                )
            except TimeoutError:
                return Outcome(plan, False, "no complete reply in time", time.monotonic() - started)
            return Outcome(plan, True, "", time.monotonic() - started)

    def _place(self, name: str) -> DiscordPlace:
        """The place, with a new user (a new DM) every CONVERSATION_MESSAGES in a DM place."""
        place, count = self._places[name], self._messages[name]
        self._messages[name] += 1
        if place.dm and count and count % CONVERSATION_MESSAGES == 0:
            user = self.fake.add_user(f"{name}-{count}")
            channel = self.fake.dm_channel(user, self.bot)
            place = DiscordPlace(channel, user, mention=False, dm=True)
            self._places[name] = place
        return place

    def _complete(self, channel_id: str, message_id: str) -> bool:
        """The channel's latest message is a bot message after ours, edited to its final text."""
        last = self.fake.channels[channel_id].get("last_message_id")
        if last is None or last == message_id:
            return False
        latest = self.fake.messages.get(last)
        return latest is not None and _by_bot(latest) and not latest["content"].endswith(CURSOR)

    def tally(self) -> Tally:
        tally = Tally()
        replies: dict[str, list[dict[str, Any]]] = {}
        current: dict[str, str] = {}  # channel -> the user message being answered there
        for message in self.fake.messages.values():
            channel = message["channel_id"]
            if message["id"] in self.sent:
                current[channel] = message["id"]
                replies[message["id"]] = []
            elif _by_bot(message):
                if channel in current:
                    replies[current[channel]].append(message)
                else:
                    tally.stray += 1
        for message_id, (index, persona_id) in self.sent.items():
            shown = replies.get(message_id, [])
            name = self.personas[persona_id].name
            tally.count(
                index,
                len(shown),
                all(_shown_as(m, name) for m in shown),
                (e for m in shown for e in error_in(m["content"])),
            )
        return tally


def _by_bot(message: dict[str, Any]) -> bool:
    return bool(message["author"].get("bot") or message.get("webhook_id"))


def _shown_as(message: dict[str, Any], name: str) -> bool:
    """Shown by the persona: its webhook's name, or its name in front of a plain bot message."""
    if message.get("webhook_id"):
        return bool(message["author"]["username"] == name)
    return bool(message["content"].startswith(f"**{name}:** "))


# --------------------------------------------------------------------------- Slack


@dataclass(frozen=True)
class SlackPlace:
    channel: str
    user: str
    mention: bool
    bound_to: str = ""


class SlackSide:
    """Users writing in a channel (mentioning the app), in a persona's bound channel and in DMs,
    delivered as signed HTTP events; each message starts a thread the reply goes to."""

    def __init__(
        self,
        fake: FakeSlack,
        events_url: str,
        places: dict[str, SlackPlace],
        personas: dict[str, SoakPersona],
    ) -> None:
        self.fake = fake
        self.events_url = events_url
        self._places = places
        self.personas = personas
        self.sent: dict[tuple[str, str], tuple[int, str]] = {}  # (channel, ts) -> index, persona
        self._threads: dict[tuple[str, str], list[Message]] = {}
        self._indexed = 0

    def places(self, persona: SoakPersona) -> list[str]:
        return [name for name, p in self._places.items() if p.bound_to in ("", persona.id)]

    async def send(self, plan: Plan) -> Outcome:
        place = self._places[plan.place]
        persona = self.personas[plan.persona]
        text = addressed(persona, plan.question, not place.bound_to)
        started = time.monotonic()
        event = self.fake.user_message(
            text, channel=place.channel, user=place.user, mention=place.mention
        )
        key = (place.channel, str(event["ts"]))
        self.sent[key] = (plan.index, plan.persona)
        # Slack sends a mention in a channel twice: as `app_mention` and as a `message` event.
        events = [event, self.fake.twin(event)] if place.mention and plan.variant else [event]
        delivered = await asyncio.gather(
            *(self.fake.post_event(self.events_url, e) for e in events)
        )
        refused = [status for status, _, _ in delivered if status != 200]
        if refused:
            return Outcome(plan, False, f"event refused: {refused}", time.monotonic() - started)
        try:
            await self.fake.wait_for(lambda: self._complete(key), REPLY_TIMEOUT_S)
        except TimeoutError:
            return Outcome(plan, False, "no complete reply in time", time.monotonic() - started)
        return Outcome(plan, True, "", time.monotonic() - started)

    def _thread(self, key: tuple[str, str]) -> list[Message]:
        """The bot's messages in a thread (indexing only the messages new since the last call)."""
        messages = self.fake.messages
        if len(messages) > self._indexed:
            for message in itertools.islice(messages.values(), self._indexed, None):
                if message.bot_id == BOT_ID:
                    self._threads.setdefault((message.channel, message.thread_ts), []).append(
                        message
                    )
            self._indexed = len(messages)
        return self._threads.get(key, [])

    def _complete(self, key: tuple[str, str]) -> bool:
        shown = self._thread(key)
        return bool(shown) and all(_settled(m) for m in shown)

    def tally(self) -> Tally:
        tally = Tally()
        self._thread(("", ""))
        ours = set(self.sent)
        tally.stray = sum(len(v) for k, v in self._threads.items() if k not in ours)
        for key, (index, persona_id) in self.sent.items():
            shown = self._thread(key)
            name = self.personas[persona_id].name
            errors = [e for m in shown for e in error_in(m.text)]
            errors += [f"reaction :{r}:" for c, ts, r in self.fake.reactions if (c, ts) == key]
            tally.count(index, len(shown), all(m.username == name for m in shown), errors)
        tally.error_replies += [f"ephemeral: {e.get('text')}" for e in self.fake.ephemeral]
        unexpected = [r for r in self.fake.reactions if r[2] in SLACK_ERROR_REACTIONS]
        tally.error_replies += [f"reaction {r}" for r in unexpected if (r[0], r[1]) not in ours]
        return tally


def _settled(message: Message) -> bool:
    """A streamed message was stopped; an edited one no longer shows the placeholder."""
    if message.stream:
        return message.stream == "completed"
    return message.text != PLACEHOLDER or message.edits > 0


# --------------------------------------------------------------------------- HTTP


class HttpSide:
    """OpenAI-style chat completions, streamed or not; `place` names a user whose conversations
    the server keeps (a new one every CONVERSATION_MESSAGES), or is "" (no `user`: the request
    carries the whole history)."""

    def __init__(
        self, client: httpx.AsyncClient, users: Sequence[str], personas: dict[str, SoakPersona]
    ) -> None:
        self.client = client
        self.users = users
        self.personas = personas
        self.outcomes: dict[int, Outcome] = {}
        self._messages = dict.fromkeys(users, 0)

    def places(self, persona: SoakPersona) -> list[str]:
        return list(self.users)

    async def send(self, plan: Plan) -> Outcome:
        body: dict[str, Any] = {
            "model": plan.persona,
            "messages": [{"role": "user", "content": plan.question}],
            "stream": plan.variant,
        }
        if plan.place:
            conversation = self._messages[plan.place] // CONVERSATION_MESSAGES
            body["user"] = f"{plan.place}-{conversation}"
            self._messages[plan.place] += 1
        started = time.monotonic()
        try:
            if plan.variant:
                ok, detail = await self._streamed(body)
            else:
                ok, detail = await self._whole(body)
        except httpx.HTTPError as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        outcome = Outcome(plan, ok, detail, time.monotonic() - started)
        self.outcomes[plan.index] = outcome
        return outcome

    async def _whole(self, body: dict[str, Any]) -> tuple[bool, str]:
        response = await self.client.post("/v1/chat/completions", json=body)
        if response.status_code != 200:
            return False, f"HTTP {response.status_code}: {response.text[:200]}"
        data = response.json()
        content = data["choices"][0]["message"]["content"]
        if data.get("model") != body["model"]:
            return False, f"answered as {data.get('model')}"
        return bool(content.strip()), "" if content.strip() else "empty completion"

    async def _streamed(self, body: dict[str, Any]) -> tuple[bool, str]:
        text, done, errors = "", False, []
        async with self.client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return False, f"HTTP {response.status_code}: {response.text[:200]}"
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    event = json.loads(line[6:])
                    if "error" in event:
                        errors.append(str(event["error"].get("message")))
                    elif event.get("model") != body["model"]:
                        errors.append(f"answered as {event.get('model')}")
                    for choice in event.get("choices", []):
                        text += choice["delta"].get("content") or ""
        if errors or not done:
            return False, "; ".join(errors) or "stream ended without [DONE]"
        return bool(text.strip()), "" if text.strip() else "empty completion"

    def tally(self) -> Tally:
        tally = Tally()
        for index, outcome in sorted(self.outcomes.items()):
            tally.count(index, 1 if outcome.ok else 0, True, [])
            if not outcome.ok:
                tally.error_replies.append(f"#{index}: {outcome.detail}")
        return tally


# --------------------------------------------------------------------------- persona edits


class PersonaEditor:
    """Rewrites persona.md files while the soak runs: a valid edit (new instructions) about every
    `interval_s`, now and then an invalid one that the next save of that persona fixes. Saves
    alternate between writing in place and replacing the file (as editors do)."""

    def __init__(
        self,
        personas_dir: Path,
        personas: Sequence[SoakPersona],
        rng: random.Random,
        interval_s: float,
    ) -> None:
        self.personas_dir = personas_dir
        self.personas = list(personas)
        self.rng = rng
        self.interval_s = interval_s
        self.valid = 0
        self.invalid: dict[InvalidKind, int] = dict.fromkeys(INVALID_KINDS, 0)
        self._broken: SoakPersona | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Edit until `stop` is set; the last save always leaves every file valid."""
        while not stop.is_set():
            self.edit_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s * self.rng.uniform(0.5, 1.5))
        if self._broken is not None:
            self._save_valid(self._broken)

    def edit_once(self) -> None:
        if self._broken is not None:
            self._save_valid(self._broken)
            self._broken = None
            return
        persona = self.rng.choice(self.personas)
        if self.rng.random() < INVALID_EDIT_SHARE:
            kind = self.rng.choice(INVALID_KINDS)
            self._write(persona, _broken_text(persona, kind))
            self.invalid[kind] += 1
            self._broken = persona
        else:
            self._save_valid(persona)

    def _save_valid(self, persona: SoakPersona) -> None:
        self.valid += 1
        self._write(persona, persona.text(self.valid, self.rng.choice(STYLE_LINES)))

    def _write(self, persona: SoakPersona, text: str) -> None:
        path = self.personas_dir / persona.id / "persona.md"
        if self.rng.random() < 0.5:
            path.write_text(text, encoding="utf-8")
        else:
            temp = path.with_name(f".persona.md.{self.valid}.tmp")
            temp.write_text(text, encoding="utf-8")
            os.replace(temp, path)


def _broken_text(persona: SoakPersona, kind: InvalidKind) -> str:
    if kind == "unknown key":
        return f"---\n{persona.front}colour: teal\n---\n{persona.instructions}\n"
    if kind == "broken YAML":
        return f"---\n{persona.front}starters: [unclosed\n---\n{persona.instructions}\n"
    return f"---\n{persona.front}---\n"


# --------------------------------------------------------------------------- memory

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (0 when it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """CPU time (user + system) a process has used, in seconds (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass(frozen=True)
class MemorySample:
    """Resident memory and CPU time used so far, of the server and of its model worker."""

    done: int  # messages answered when sampled
    server_mb: float
    worker_mb: float
    server_cpu_s: float
    worker_cpu_s: float

    @property
    def total_mb(self) -> float:
        return self.server_mb + self.worker_mb


class MemorySampler:
    """Samples the server and its model worker every `every` answered messages."""

    def __init__(self, server_pid: int, worker_pids: Callable[[], list[int]], every: int) -> None:
        self.server_pid = server_pid
        self.worker_pids = worker_pids
        self.every = every
        self.samples: list[MemorySample] = []

    def sample(self, done: int) -> None:
        workers = self.worker_pids()
        self.samples.append(
            MemorySample(
                done,
                rss_mb(self.server_pid),
                sum(rss_mb(pid) for pid in workers),
                cpu_s(self.server_pid),
                sum(cpu_s(pid) for pid in workers),
            )
        )

    def on_done(self, done: int) -> None:
        if done % self.every == 0:
            self.sample(done)


# --------------------------------------------------------------------------- the run


def plan_messages(
    count: int,
    sides: dict[Platform, Side],
    personas: Sequence[SoakPersona],
    rng: random.Random,
) -> list[Plan]:
    """`count` messages spread at random over the platforms, personas, places and questions."""
    plans = []
    for index in range(count):
        platform = rng.choice(PLATFORMS)
        persona = rng.choice(personas)
        place = rng.choice(sides[platform].places(persona))
        question = rng.choice(persona.questions)
        plans.append(Plan(index, platform, persona.id, question, place, rng.random() < 0.5))
    return plans


async def drive(
    plans: Sequence[Plan],
    sides: dict[Platform, Side],
    in_flight: int,
    on_done: Callable[[int], None],
) -> list[Outcome]:
    """Send every planned message, at most `in_flight` at once; `on_done(n)` after each reply."""
    slots = asyncio.Semaphore(in_flight)
    outcomes: list[Outcome] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(plan: Plan) -> None:
        try:
            outcomes.append(await sides[plan.platform].send(plan))
            on_done(len(outcomes))
        finally:
            slots.release()

    for plan in plans:
        await slots.acquire()
        task = asyncio.create_task(one(plan))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*tasks)
    return outcomes


@dataclass(frozen=True)
class SoakReport:
    """Everything the soak measured, and the text printed for people."""

    messages: int
    in_flight: int
    seed: int
    duration_s: float
    per_platform: dict[Platform, Tally]
    outcomes: list[Outcome]
    edits_valid: int
    edits_invalid: dict[InvalidKind, int]
    reloads: int
    samples: list[MemorySample]
    warm_at: int
    health: str
    persona_errors: list[str]
    stored: dict[str, dict[str, int]]

    def total(self, what: str) -> int:
        return sum(len(getattr(t, what)) for t in self.per_platform.values())

    @property
    def stray(self) -> int:
        return sum(t.stray for t in self.per_platform.values())

    @property
    def warm(self) -> MemorySample:
        return next((s for s in self.samples if s.done >= self.warm_at), self.samples[-1])

    @property
    def growth_after_warm_mb(self) -> float:
        return self.samples[-1].total_mb - self.warm.total_mb

    def slope_mb_per_1000(self) -> float:
        points = [(s.done, s.total_mb) for s in self.samples if s.done >= self.warm_at]
        if len({x for x, _ in points}) < 2:
            return 0.0
        slope, _ = statistics.linear_regression([x for x, _ in points], [y for _, y in points])
        return slope * 1000

    def text(self) -> str:
        seconds = sorted(o.seconds for o in self.outcomes) or [0.0]
        start, warm, end = self.samples[0], self.warm, self.samples[-1]

        def mb(s: MemorySample) -> str:
            return f"{s.total_mb:.0f} ({s.server_mb:.0f} + {s.worker_mb:.0f})"

        platforms = ", ".join(f"{k} {t.sent}" for k, t in self.per_platform.items())
        invalid = ", ".join(f"{v} {k}" for k, v in self.edits_invalid.items())
        stored = "; ".join(
            f"{p}: " + ", ".join(f"{n} {s}" for s, n in sorted(c.items()))
            for p, c in sorted(self.stored.items())
        )
        lines = [
            f"bots soak: {self.messages} messages ({platforms}), {self.in_flight} in flight, "
            f"seed {self.seed}",
            f"  duration {self.duration_s:.1f} s, {self.messages / self.duration_s:.2f} msgs/s; "
            f"reply time p50 {statistics.median(seconds):.2f} s, "
            f"p95 {seconds[int(0.95 * (len(seconds) - 1))]:.2f} s, max {seconds[-1]:.2f} s",
            f"  lost {self.total('lost')}, duplicated {self.total('duplicated')}, "
            f"wrong persona {self.total('wrong_persona')}, "
            f"error replies {self.total('error_replies')}, stray bot messages {self.stray}",
            f"  persona saves: {self.edits_valid} valid, invalid: {invalid} (each fixed by the "
            f"next save); reloads counted by /status: {self.reloads}",
            f"  assistant turns stored: {stored}",
            "  RSS MB total (server + model worker): "
            f"start {mb(start)}, warm after {warm.done} msgs {mb(warm)}, "
            f"end after {end.done} msgs {mb(end)}",
            f"  growth after warm-up {self.growth_after_warm_mb:+.1f} MB, "
            f"slope {self.slope_mb_per_1000():+.1f} MB per 1,000 messages "
            f"({len(self.samples)} samples)",
            f"  CPU s during the run: server {end.server_cpu_s - start.server_cpu_s:.1f}, "
            f"model worker {end.worker_cpu_s - start.worker_cpu_s:.1f} "
            f"(wall {self.duration_s:.1f})",
            f"  at the end: {self.health}; persona errors: {self.persona_errors or 'none'}",
        ]
        for name, tally in self.per_platform.items():
            problems: dict[str, Sequence[object]] = {
                "lost": tally.lost,
                "duplicated": tally.duplicated,
                "wrong persona": tally.wrong_persona,
                "errors": tally.error_replies,
            }
            for label, items in problems.items():
                if items:
                    lines.append(f"  {name} {label}: {items[:20]}")
        return "\n".join(lines)
