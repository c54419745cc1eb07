"""The chat service: one incoming message -> a streamed, stored reply from the right persona.

Every adapter (terminal, HTTP, Discord, Slack, web) goes through `ChatService.start`; platform
details stay in the adapters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from bots.chat.policy import Policy
from bots.chat.prompt import BuiltPrompt, build_prompt
from bots.chat.store import ConversationStore
from bots.engine.base import ChatMessage, Engine, EngineBusy, GenerationRequest, Piece, Usage
from bots.knowledge.library import UnknownPersona
from bots.knowledge.model import Hit, Retriever
from bots.persona.model import Persona
from bots.persona.registry import PersonaRegistry
from bots.settings import Settings

log = logging.getLogger(__name__)

DECLINE = "I don't know: my documents don't cover that."
HISTORY_LIMIT = 40
SHUTTING_DOWN = "I'm restarting right now; please ask again in a minute."
SHUTDOWN_RETRY_AFTER_S = 30.0


class Knowledge(Protocol):
    """What the service needs of the knowledge side."""

    def retriever(self, persona_id: str, libraries: Sequence[str]) -> Retriever: ...


@dataclass(frozen=True)
class Incoming:
    """A message from any platform, reduced to what choosing and answering needs."""

    platform: str
    place: str
    user_id: str
    text: str
    persona_id: str
    roles: tuple[str, ...] = ()
    message_id: str = ""
    remember: bool = True
    history: tuple[ChatMessage, ...] = ()
    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    fresh: bool = False  # evaluate without cached prefixes (exactly repeatable, for evals)


class ChatRefused(Exception):
    """The message will not be answered; `user_message` is short and safe to show."""

    def __init__(self, user_message: str, *, status: int = 400, retry_after_s: float = 0.0) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.status = status
        self.retry_after_s = retry_after_s


@dataclass
class Reply:
    """A reply being generated: iterate for text pieces; afterwards `text`, `usage` are final."""

    persona: Persona
    sources: tuple[Hit, ...]
    prompt: BuiltPrompt | None
    conversation_id: int | None
    turn_id: int | None
    _pieces: AsyncIterator[Piece] | None
    _service: ChatService
    text: str = ""
    usage: Usage | None = None
    finish_reason: Literal["stop", "length", "cancelled", "error", "declined"] | None = None
    started: float = field(default_factory=time.perf_counter)
    platform: str = ""

    def __aiter__(self) -> AsyncIterator[str]:
        return self._run()

    async def _run(self) -> AsyncIterator[str]:
        if self._pieces is None:
            self.finish_reason = "declined"
            self.text = DECLINE
            await self._service._finish(self, "complete")
            yield DECLINE
            return
        status: Literal["complete", "interrupted"] = "interrupted"
        try:
            async for piece in self._pieces:
                if piece.text:
                    self.text += piece.text
                    yield piece.text
                if piece.finish_reason is not None:
                    self.finish_reason = piece.finish_reason
                    self.usage = piece.usage
            status = "complete" if self.finish_reason in ("stop", "length") else "interrupted"
        except BaseException:
            self.finish_reason = self.finish_reason or "error"
            raise
        finally:
            if self.finish_reason is None:
                self.finish_reason = "cancelled"
            await self._pieces.aclose()  # type: ignore[attr-defined]
            await self._service._finish(self, status)

    def source_dicts(self) -> list[dict[str, Any]]:
        """Sources for display: one entry per document, with its best chunk's score."""
        seen: dict[str, dict[str, Any]] = {}
        for hit in self.sources:
            if hit.path not in seen:
                seen[hit.path] = source_dict(hit)
        return list(seen.values())


def source_dict(hit: Hit) -> dict[str, Any]:
    """The public shape of a source: path, title, score (plus heading)."""
    return {
        "path": hit.path,
        "title": hit.title,
        "heading": hit.heading,
        "score": round(hit.score, 4),
    }


@dataclass(frozen=True)
class ReplyRecord:
    """What logs and metrics learn of a finished or refused reply: figures, never the text."""

    persona_id: str
    platform: str
    outcome: str  # stop, length, cancelled, error, declined, busy, rate_limited
    usage: Usage
    duration_ms: float


class ChatService:
    """Chooses the snapshot, retrieves, builds the prompt, streams from the engine, stores turns."""

    def __init__(
        self,
        settings: Settings,
        registry: PersonaRegistry,
        knowledge: Knowledge,
        engine: Engine,
        store: ConversationStore,
        policy: Policy | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.knowledge = knowledge
        self.engine = engine
        self.store = store
        self.policy = policy or Policy(settings.policy)
        self.listeners: list[Callable[[ReplyRecord], None]] = []
        self.in_flight = 0
        self.draining = False

    def drain(self) -> None:
        """Refuse new messages from now on (shutdown); replies under way go on."""
        self.draining = True

    def persona(self, persona_id: str) -> Persona:
        persona = self.registry.get(persona_id)
        if persona is None:
            raise self._no_such_persona(persona_id)
        return persona

    def _no_such_persona(self, persona_id: str) -> ChatRefused:
        others = [p.id for p in self.registry.personas() if p.id != persona_id]
        names = ", ".join(others) or "none"
        return ChatRefused(
            f"That persona doesn't exist: {persona_id!r} (have: {names}).", status=404
        )

    def retrieve(self, persona: Persona, query: str, k: int | None = None) -> list[Hit]:
        retriever = self.knowledge.retriever(persona.id, persona.knowledge)
        return retriever.search(query, k or self.settings.retrieval.top_k)

    async def start(self, incoming: Incoming, *, check_policy: bool = True) -> Reply:
        """Begin a reply. Raises ChatRefused (unknown persona, access, rate) or EngineBusy."""
        started = time.perf_counter()
        if self.draining:
            raise ChatRefused(SHUTTING_DOWN, status=503, retry_after_s=SHUTDOWN_RETRY_AFTER_S)
        persona = self.persona(incoming.persona_id)
        if check_policy:
            decision = self.policy.check(
                persona, incoming.platform, incoming.user_id, incoming.roles
            )
            if not decision.allowed:
                raise ChatRefused(
                    decision.reason,
                    status=429 if decision.retry_after_s else 403,
                    retry_after_s=decision.retry_after_s,
                )
        conversation_id = None
        history = list(incoming.history)
        if incoming.remember:
            conversation_id = await self.store.run(
                self.store.conversation_id, incoming.platform, incoming.place
            )
            stored = await self.store.run(self.store.history, conversation_id, HISTORY_LIMIT)
            if stored:
                history = [ChatMessage(t.role, t.content) for t in stored]  # type: ignore[arg-type]
        try:
            hits = await asyncio.to_thread(self.retrieve, persona, incoming.text)
        except UnknownPersona as exc:
            # The folder was deleted after the snapshot was chosen; the watcher has not yet
            # removed it from the registry. Same answer as a persona that never existed.
            raise self._no_such_persona(incoming.persona_id) from exc
        # A strict persona declines below the threshold; an open one can use loosely related text.
        retrieval = self.settings.retrieval
        floor = retrieval.min_score if persona.grounding == "strict" else retrieval.min_score_open
        relevant = [h for h in hits if h.score >= floor]
        model = self.settings.model
        max_tokens = incoming.max_tokens or persona.sampling.max_tokens or model.max_tokens
        # A strict persona with nothing relevant declines without the model: deterministic, and
        # no prompt to build, so it works even while the engine is restarting.
        declines = persona.grounding == "strict" and not relevant
        prompt = (
            None
            if declines
            else build_prompt(
                persona,
                history,
                incoming.text,
                relevant,
                count_tokens=self.engine.count_tokens,
                context_size=self.engine.context_size,
                max_tokens=max_tokens,
                max_knowledge_tokens=self.settings.retrieval.max_knowledge_tokens,
            )
        )
        sources = prompt.sources if prompt else ()
        pieces: AsyncIterator[Piece] | None = None
        if prompt is not None:
            temperature = incoming.temperature
            if temperature is None:
                temperature = persona.sampling.temperature
            request = GenerationRequest(
                messages=prompt.messages,
                max_tokens=max_tokens,
                temperature=model.temperature if temperature is None else temperature,
                top_p=persona.sampling.top_p or model.top_p,
                repeat_penalty=persona.sampling.repeat_penalty or model.repeat_penalty,
                seed=incoming.seed,
                timeout_s=model.timeout_s,
                reuse_cache=not incoming.fresh,
            )
            stream = self.engine.stream(request)
            # Prime the generator so a full queue raises EngineBusy here, before any turn is
            # stored; a caller that gives up while waiting (message deleted) frees the engine.
            try:
                first = await stream.__anext__()
            except BaseException as exc:
                await stream.aclose()  # type: ignore[attr-defined]
                outcome = "busy" if isinstance(exc, EngineBusy) else "error"
                self._observe(persona.id, incoming.platform, outcome, None, started)
                raise
            pieces = _prepend(first, stream)
        turn_id = None
        if conversation_id is not None:
            await self.store.run(
                lambda: self.store.add_turn(
                    conversation_id,
                    "user",
                    incoming.text,
                    persona.id,
                    user_id=incoming.user_id,
                    platform_message_id=incoming.message_id,
                )
            )
            turn_id = await self.store.run(
                lambda: self.store.add_turn(
                    conversation_id,
                    "assistant",
                    "",
                    persona.id,
                    status="pending",
                    sources=[source_dict(h) for h in sources],
                )
            )
        reply = Reply(persona, sources, prompt, conversation_id, turn_id, pieces, self)
        reply.platform = incoming.platform
        reply.started = started  # duration counts from the message, not the first token
        self.in_flight += 1
        return reply

    async def complete(self, incoming: Incoming) -> Reply:
        """Start a reply and read it to the end."""
        reply = await self.start(incoming)
        async for _ in reply:
            pass
        return reply

    async def reset(self, platform: str, place: str) -> int:
        """Forget a conversation's history (its turns stay for feedback)."""
        conversation_id = await self.store.run(self.store.conversation_id, platform, place)
        return await self.store.run(self.store.forget, conversation_id)

    async def _finish(self, reply: Reply, status: Literal["complete", "interrupted"]) -> None:
        try:
            if reply.turn_id is not None:
                await self.store.run(
                    self.store.finish_turn, reply.turn_id, reply.text, status, reply.source_dicts()
                )
        finally:
            self.in_flight -= 1
            outcome = reply.finish_reason or "error"
            self._observe(reply.persona.id, reply.platform, outcome, reply.usage, reply.started)

    def _observe(
        self, persona_id: str, platform: str, outcome: str, usage: Usage | None, started: float
    ) -> None:
        """One log line per reply (figures only) and the listeners (metrics)."""
        usage = usage or Usage()
        record = ReplyRecord(
            persona_id, platform, outcome, usage, (time.perf_counter() - started) * 1000
        )
        fields = {
            "persona": persona_id,
            "platform": platform,
            "outcome": outcome,
            "queue_ms": round(usage.queue_ms),
            "ttft_ms": round(usage.ttft_ms),
            "tokens": usage.completion_tokens,
            "tokens_per_s": round(usage.tokens_per_s, 1),
            "duration_ms": round(record.duration_ms),
        }
        log.info("reply %s", " ".join(f"{k}={v}" for k, v in fields.items()), extra=fields)
        for listener in self.listeners:
            try:
                listener(record)
            except Exception:  # metrics must never break a reply
                log.exception("reply listener failed")


async def _prepend(first: Piece, rest: AsyncIterator[Piece]) -> AsyncIterator[Piece]:
    try:
        yield first
        if first.finish_reason is None:
            async for piece in rest:
                yield piece
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
