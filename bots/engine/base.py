"""The seam between the chat side and the model: requests in, text pieces out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat prompt."""

    role: Role
    content: str


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter applied on the shared model for one request.

    `name` is how a server knows it (vLLM's model name, e.g. `handbook@3`); `path` the GGUF file
    a local engine loads (and llama-server was started with); `scale` multiplies its effect.
    """

    name: str
    path: str
    scale: float = 1.0


@dataclass(frozen=True)
class GenerationRequest:
    """Everything the engine needs for one reply; knows no persona and no platform."""

    messages: tuple[ChatMessage, ...]
    max_tokens: int = 400
    temperature: float = 0.3
    top_p: float = 0.9
    top_k: int = 40
    repeat_penalty: float = 1.15
    seed: int | None = None
    stop: tuple[str, ...] = ()
    timeout_s: float = 120.0
    # False evaluates the whole prompt afresh: cached prefixes are evaluated in other batch
    # shapes, whose float rounding can change a long greedy reply, and evals must repeat exactly.
    reuse_cache: bool = True
    # None: the base model as it is. Requests with different adapters never share a decode.
    adapter: Adapter | None = None
    # How the conversation's history will hold this turn's user message (the question without
    # the documents that came with it). With it, the batched engine evaluates the next turn's
    # start (the history, this question and this reply) while it is idle: the follow-up's
    # first token comes sooner, its reply is the same.
    remembered_as: str | None = None


@dataclass(frozen=True)
class Usage:
    """Token counts and timings of one finished generation."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    queue_ms: float = 0.0
    ttft_ms: float = 0.0
    total_ms: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        gen_ms = self.total_ms - self.ttft_ms
        return self.completion_tokens / (gen_ms / 1000) if gen_ms > 0 else 0.0


@dataclass(frozen=True)
class Piece:
    """A piece of streamed text; the last piece carries why it stopped and the usage.

    While a request waits in line, pieces with no text and `ahead` set say how many requests
    must end before it starts (sent when that number changes; an engine that cannot tell sends
    none). Consumers that only want text can ignore them: their `text` is empty.
    """

    text: str
    finish_reason: Literal["stop", "length", "cancelled"] | None = None
    usage: Usage | None = field(default=None)
    ahead: int | None = None


class EngineError(RuntimeError):
    """The engine could not produce a reply (a crash, a failed load)."""


class EngineBusy(EngineError):
    """The request queue is full; the caller should try again after `retry_after_s`."""

    def __init__(self, retry_after_s: float = 5.0) -> None:
        super().__init__(f"engine busy: queue full, retry in {retry_after_s:.0f}s")
        self.retry_after_s = retry_after_s


class EngineTimeout(EngineError):
    """The reply took longer than the request's timeout."""


@dataclass(frozen=True)
class EngineStatus:
    """What `/status` and `/metrics` show of the engine."""

    model: str
    queue_depth: int
    queue_capacity: int
    active: int
    healthy: bool = True
    detail: str = ""


class Engine(Protocol):
    """One shared model. `stream` yields pieces; closing the iterator cancels the generation."""

    def stream(self, request: GenerationRequest) -> AsyncIterator[Piece]: ...

    def count_tokens(self, text: str) -> int: ...

    @property
    def context_size(self) -> int: ...

    def status(self) -> EngineStatus: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


async def read_pieces(
    out: asyncio.Queue[Piece | BaseException], deadline: float, timeout_s: float
) -> AsyncIterator[Piece]:
    """Pieces a worker posts to `out`, up to the final one; an error it posts is raised here.

    `deadline` is on the running loop's clock; past it, EngineTimeout names `timeout_s`.
    """
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                item = await out.get()
        except TimeoutError:
            raise EngineTimeout(
                f"no complete reply within the request's {timeout_s:g}s timeout"
            ) from None
        if isinstance(item, BaseException):
            raise item
        yield item
        if item.finish_reason is not None:
            return
