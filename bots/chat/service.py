"""The chat service: one incoming message -> a streamed, stored reply from the right persona.

Every adapter (terminal, HTTP, Discord, Slack, web) goes through `ChatService.start`; platform
details stay in the adapters. The service owns the rules: it always applies the policy (which
knows the platforms it governs), turns a full engine queue into a refusal with a retry time, and
answers the conversation facts the adapters need (first sightings, which message shows a turn,
feedback, the persona that last spoke in a place), so no adapter touches the store.

With several instances on one database the store also holds each reply's conversation (no
other instance answers in it until the reply is stored) and the users' rate budgets; a store
that does not answer refuses the message with a short notice instead of failing the reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import bots.chat.grounding as grounding
import bots.chat.provenance as provenance
import bots.chat.visibility as visibility
from bots.chat import notices
from bots.chat.facts import HISTORY_LIMIT, ConversationFacts
from bots.chat.generation import generation_request, primed
from bots.chat.model import Admission, ChatRefused, Incoming
from bots.chat.policy import Policy
from bots.chat.prompt import build_prompt
from bots.chat.reply import Reply, ReplyRecord, ReplyStatus, source_dict
from bots.engine.base import ChatMessage, Engine, EngineBusy, Piece, Usage
from bots.knowledge.audience import EVERYONE, Access, Reader
from bots.knowledge.library import UnknownPersona
from bots.knowledge.model import Hit, Retriever
from bots.persona.model import Persona
from bots.persona.registry import PersonaRegistry
from bots.settings import Settings
from bots.store.base import ConversationStore, Held, StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

SHUTDOWN_RETRY_AFTER_S = 30.0
STORE_RETRY_AFTER_S = 5.0


class Knowledge(Protocol):
    """What the service needs of the knowledge side."""

    def retriever(self, persona_id: str, libraries: Sequence[str]) -> Retriever: ...

    def access(self, persona_id: str, path: str) -> Access: ...


class ChatService(ConversationFacts):
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
        # Conversations held by replies under way, released when each reply is stored.
        self._held: dict[int, Held] = {}

    def drain(self) -> None:
        """Refuse new messages from now on (shutdown); replies under way go on."""
        self.draining = True

    def accepting_work(self) -> bool:
        """False once the bot is shutting down (nothing new should start)."""
        return not self.draining

    def persona(self, persona_id: str) -> Persona:
        persona = self.registry.get(persona_id)
        if persona is None:
            raise self._no_such_persona(persona_id)
        return persona

    def _no_such_persona(self, persona_id: str) -> ChatRefused:
        others = [p.id for p in self.registry.personas() if p.id != persona_id]
        return ChatRefused(
            notices.unknown_persona(persona_id, others), kind="unknown_persona", status=404
        )

    def retrieve(
        self, persona: Persona, query: str, k: int | None = None, reader: Reader = EVERYONE
    ) -> list[Hit]:
        """The persona's best hits for `query` among the documents `reader` may see."""
        retriever = self.knowledge.retriever(persona.id, persona.knowledge)
        return retriever.search(query, k or self.settings.retrieval.top_k, reader)

    async def admit(self, incoming: Incoming) -> Admission:
        """Check a message before any work: not shutting down, a known persona, the policy.

        Raises ChatRefused. Charges the sender's rate budget once (shared by every instance);
        `start(admission)` does not check again.
        """
        if self.draining:
            raise ChatRefused(
                notices.SHUTTING_DOWN,
                kind="shutting_down",
                status=503,
                retry_after_s=SHUTDOWN_RETRY_AFTER_S,
            )
        persona = self.persona(incoming.persona_id)
        decision = self.policy.check(persona, incoming.platform, incoming.user_id, incoming.roles)
        if not decision.allowed:
            raise ChatRefused(decision.reason, kind="no_access", status=403)
        key = self.policy.budget_key(incoming.platform, incoming.user_id)
        rules = self.settings.policy
        if key is not None and rules.rate_limit_messages > 0:
            wait = await self._stored(
                self.store.take_budget(key, rules.rate_limit_messages, rules.rate_limit_window_s)
            )
            if wait:
                self._observe(
                    persona.id, incoming.platform, "rate_limited", None, time.perf_counter()
                )
                raise ChatRefused(
                    notices.too_fast(wait), kind="rate_limited", status=429, retry_after_s=wait
                )
        return Admission(incoming, persona)

    async def _stored(self, work: Awaitable[T]) -> T:
        """A store call on a message's way in: a store that does not answer refuses it."""
        try:
            return await work
        except StoreUnavailable as exc:
            log.warning("refused a message: %s", exc)
            raise ChatRefused(
                notices.NO_MEMORY,
                kind="unavailable",
                status=503,
                retry_after_s=STORE_RETRY_AFTER_S,
            ) from None

    async def start(
        self, message: Incoming | Admission, *, on_wait: Callable[[int], None] | None = None
    ) -> Reply:
        """Begin a reply (admitting `message` first unless it is an Admission already).

        While the model is busy with other replies, `on_wait` hears how many must end before
        this one starts, each time that changes; it returns with the first generated piece.
        Raises ChatRefused (shutting down, unknown persona, access, rate, a full engine queue)
        or EngineError (the model failed before the first token).
        """
        started = time.perf_counter()
        admission = message if isinstance(message, Admission) else await self.admit(message)
        incoming = admission.incoming
        conversation_id = None
        held: Held | None = None
        if incoming.remember:
            conversation_id = await self._stored(
                self.store.conversation_id(incoming.platform, incoming.place)
            )
            held = await self._stored(
                self.store.lock_conversation(conversation_id, self.settings.model.timeout_s)
            )
            if held is None:
                raise ChatRefused(
                    notices.THREAD_BUSY,
                    kind="busy",
                    status=503,
                    retry_after_s=STORE_RETRY_AFTER_S,
                )
        try:
            reply = await self._begin(admission, conversation_id, started, on_wait)
        except BaseException:
            if held is not None:
                await held.release()
            raise
        if held is not None and reply.turn_id is not None:
            self._held[reply.turn_id] = held
        elif held is not None:
            await held.release()
        self.in_flight += 1
        return reply

    async def _begin(
        self,
        admission: Admission,
        conversation_id: int | None,
        started: float,
        on_wait: Callable[[int], None] | None,
    ) -> Reply:
        """Retrieve, build the prompt, prime the engine and store the pending turns."""
        incoming, persona = admission.incoming, admission.persona
        history = list(incoming.history)
        history_ids: list[int] = []  # the stored turns `history` holds, for the record
        if conversation_id is not None:
            stored = await self._stored(self.store.history(conversation_id, HISTORY_LIMIT))
            if stored:
                kept = visibility.visible_history(
                    persona, stored, incoming.reader, self.knowledge.access
                )
                history = [ChatMessage(t.role, t.content) for t in kept]  # type: ignore[arg-type]
                history_ids = [t.id for t in kept]
        try:
            hits = await asyncio.to_thread(
                self.retrieve, persona, incoming.text, None, incoming.reader
            )
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
                pinned=visibility.visible_pinned(persona, incoming.reader, self.knowledge.access),
            )
        )
        sources = prompt.sources if prompt else ()
        pieces: AsyncIterator[Piece] | None = None
        if prompt is not None:
            request = generation_request(incoming, persona, prompt, model, max_tokens)
            stream = self.engine.stream(request)
            # Prime the generator so a full queue raises EngineBusy here, before any turn is
            # stored; a caller that gives up while waiting (message deleted) frees the engine.
            try:
                pieces = await primed(stream, on_wait)
            except EngineBusy as exc:
                self._observe(persona.id, incoming.platform, "busy", None, started)
                raise ChatRefused(
                    notices.busy(exc.retry_after_s),
                    kind="busy",
                    status=503,
                    retry_after_s=exc.retry_after_s,
                ) from exc
            except BaseException:
                self._observe(persona.id, incoming.platform, "error", None, started)
                raise
        turn_id = None
        if conversation_id is not None:
            try:
                await self._stored(
                    self.store.add_turn(
                        conversation_id,
                        "user",
                        incoming.text,
                        persona.id,
                        user_id=incoming.user_id,
                        platform_message_id=incoming.message_id,
                    )
                )
                turn_id = await self._stored(
                    self.store.add_turn(
                        conversation_id,
                        "assistant",
                        "",
                        persona.id,
                        status="pending",
                        sources=[source_dict(h) for h in sources],
                        persona_version=persona.content_hash,
                        made_from=provenance.made_from(incoming, prompt, history_ids),
                    )
                )
            except BaseException:
                if pieces is not None:
                    await pieces.aclose()  # type: ignore[attr-defined]
                raise
        # A strict persona's answer is checked against what the model was given (see grounding).
        gate = None
        if persona.grounding == "strict" and prompt is not None:
            given = (*prompt.pinned, *prompt.sources)
            documents = [(hit.path, hit.text) for hit in given]
            context = [part for hit in given for part in (hit.title, hit.heading)]
            gate = grounding.Gate(grounding.evidence(documents, incoming.text, context=context))
        # The duration counts from the message, not from the first token.
        return Reply(
            persona,
            sources,
            prompt,
            conversation_id,
            turn_id,
            pieces,
            self._finish,
            platform=incoming.platform,
            started=started,
            gate=gate,
        )

    # ---- conversation facts the adapters need (the rest in ConversationFacts) ----

    def place_allowed(self, *, guild_id: str = "", channel_id: str = "", team_id: str = "") -> bool:
        """The global allow/deny lists of guilds, workspaces and channels."""
        return self.policy.place_allowed(guild_id=guild_id, channel_id=channel_id, team_id=team_id)

    async def _finish(self, reply: Reply, status: ReplyStatus) -> None:
        held = self._held.pop(reply.turn_id, None) if reply.turn_id is not None else None
        try:
            if reply.turn_id is not None:
                await self.store.finish_turn(
                    reply.turn_id, reply.text, status, reply.source_dicts()
                )
        except StoreUnavailable as exc:
            # The user saw the reply; the store lost it. Another instance's sweep will mark the
            # pending turn interrupted if this instance is gone by the time the store is back.
            log.error("reply %s not stored: %s", reply.turn_id, exc)
        finally:
            if held is not None:
                await held.release()
            self.in_flight -= 1
            outcome = reply.finish_reason or "error"
            self._observe(
                reply.persona.id,
                reply.platform,
                outcome,
                reply.usage,
                reply.started,
                reply.grounding,
            )

    def _observe(
        self,
        persona_id: str,
        platform: str,
        outcome: str,
        usage: Usage | None,
        started: float,
        gate: grounding.GateReport | None = None,
    ) -> None:
        """One log line per reply (figures only) and the listeners (metrics)."""
        usage = usage or Usage()
        record = ReplyRecord(
            persona_id,
            platform,
            outcome,
            usage,
            (time.perf_counter() - started) * 1000,
            gate=gate.action if gate else "",
            unsupported=len(gate.unsupported) if gate else 0,
        )
        fields: dict[str, object] = {
            "persona": persona_id,
            "platform": platform,
            "outcome": outcome,
            "queue_ms": round(usage.queue_ms),
            "ttft_ms": round(usage.ttft_ms),
            "tokens": usage.completion_tokens,
            "tokens_per_s": round(usage.tokens_per_s, 1),
            "duration_ms": round(record.duration_ms),
        }
        if gate is not None:
            # Figures only, like the rest of the line: what the gate did, never the claims' text.
            fields["gate"] = gate.action
            fields["sentences"] = gate.sentences
            fields["dropped"] = gate.dropped
            fields |= {f"unsupported_{kind}": n for kind, n in gate.counts().items()}
        log.info("reply %s", " ".join(f"{k}={v}" for k, v in fields.items()), extra=fields)
        for listener in self.listeners:
            try:
                listener(record)
            except Exception:  # metrics must never break a reply
                log.exception("reply listener failed")
