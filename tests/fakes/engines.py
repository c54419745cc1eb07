"""Engine doubles: real `Engine`s (the Protocol in `bots.engine.base`), no mocks.

`ScriptedEngine` streams a fixed text, for behaviour the model cannot be made to show on cue (a
3000-character reply, `@everyone` bait, a full queue, a reply held at a gate). `TimedEngine`
wraps a real engine with a stopwatch, to time the code around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bots.engine.base import Engine, EngineBusy, EngineStatus, GenerationRequest, Piece, Usage

BUSY_RETRY_AFTER_S = 3.0


class ScriptedEngine:
    """A real `Engine` streaming `text` in pieces of `piece_chars`, `delay_s` apart; held until
    `gate` is set when one is given, or until the test lets one reply through `turns` (a
    semaphore: one release, one reply); refusing every request as busy with `busy=True`. With
    `parallel`, at most that many replies run at once and the others wait in line, told their
    places as the real engines tell them (`Piece.ahead`). It records the requests it was given
    and how many streams were cancelled."""

    def __init__(
        self,
        text: str = "Ahoy there.",
        *,
        piece_chars: int = 40,
        delay_s: float = 0.002,
        gate: asyncio.Event | None = None,
        turns: asyncio.Semaphore | None = None,
        busy: bool = False,
        parallel: int | None = None,
    ) -> None:
        self.text = text
        self.piece_chars = piece_chars
        self.delay_s = delay_s
        self.gate = gate
        self.turns = turns
        self.busy = busy
        self.parallel = parallel
        self.requests: list[GenerationRequest] = []
        self.cancelled = 0
        self.running = 0
        self._line: list[object] = []
        self._moved = asyncio.Event()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        self.requests.append(request)
        if self.busy:
            raise EngineBusy(BUSY_RETRY_AFTER_S)
        if self.parallel is not None:
            async with contextlib.aclosing(self._wait_in_line(self.parallel)) as places:
                async for place in places:
                    yield place
        self.running += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.turns is not None:
                await self.turns.acquire()
            for start in range(0, len(self.text), self.piece_chars):
                await asyncio.sleep(self.delay_s)
                yield Piece(self.text[start : start + self.piece_chars])
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
            self._move()
        yield Piece("", finish_reason="stop", usage=Usage(completion_tokens=len(self.text) // 4))

    async def _wait_in_line(self, parallel: int) -> AsyncIterator[Piece]:
        me = object()
        self._line.append(me)
        told = 0
        try:
            while (ahead := self._line.index(me) + 1 - (parallel - self.running)) > 0:
                if ahead != told:
                    told = ahead
                    yield Piece("", ahead=ahead)
                await self._moved.wait()
        finally:
            self._line.remove(me)
            self._move()

    def _move(self) -> None:
        self._moved.set()
        self._moved = asyncio.Event()

    def asked(self, text: str) -> int:
        """How many requests ended with a user message containing `text`."""
        return sum(text in r.messages[-1].content for r in self.requests)

    def count_tokens(self, text: str) -> int:
        return len(text) // 4 + 1

    @property
    def context_size(self) -> int:
        return 8192

    def status(self) -> EngineStatus:
        return EngineStatus("scripted", 0, 8, 0)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


@dataclass
class Timing:
    """When the engine got a request, yielded its first and its last piece (monotonic)."""

    requested: float
    first: float = 0.0
    last: float = 0.0


class TimedEngine:
    """A real engine with a stopwatch on each request (to time the adapter around it)."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.timings: list[Timing] = []

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        timing = Timing(time.monotonic())
        self.timings.append(timing)
        async for piece in self.inner.stream(request):
            if piece.text:
                timing.first = timing.first or time.monotonic()
                timing.last = time.monotonic()
            yield piece

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    @property
    def context_size(self) -> int:
        return self.inner.context_size

    def status(self) -> EngineStatus:
        return self.inner.status()

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()


async def collect(engine: Engine, request: GenerationRequest) -> tuple[str, Piece]:
    """A whole reply of `engine`: its text and its last piece (finish reason, usage)."""
    text: list[str] = []
    last = Piece("")
    async for piece in engine.stream(request):
        text.append(piece.text)
        last = piece
    return "".join(text), last


def usage(piece: Piece) -> Usage:
    """The usage a reply's last piece carries."""
    assert piece.usage is not None
    return piece.usage
