"""Run a persona's eval cases through the chat service, deterministically, and judge the answers.

Each case goes through `ChatService.start` exactly as a chat message would (same snapshot,
retrieval, prompt and engine), with temperature 0 and a fixed seed, and nothing is remembered.
With `retrieval_only` nothing is generated: `cites` and `declines` are judged from what the
service would put into the prompt, which is all a strict persona's decision to decline depends on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from dataclasses import dataclass

from bots.chat.model import ChatRefused, Incoming
from bots.chat.service import ChatService
from bots.engine.base import ChatMessage, EngineError
from bots.evals.loader import load_evals
from bots.evals.model import CaseResult, Checks, EvalCase, EvalError, EvalSuite, PersonaRun, Status
from bots.knowledge.audience import OPERATOR
from bots.knowledge.library import KnowledgeError
from bots.persona.model import Persona
from bots.runtime import Runtime

EVAL_PLATFORM = "eval"
EVAL_USER = "eval"
EVAL_TEMPERATURE = 0.0
EVAL_SEED = 1234
# A busy engine (the queue is full of chat traffic) is waited for, a few times, not failed at once.
BUSY_RETRIES = 3
ANSWER_EXCERPT_CHARS = 200
NO_EVALS = "no evals.yaml"


@dataclass(frozen=True)
class Outcome:
    """What the persona did for a case's last turn."""

    answer: str
    sources: tuple[str, ...]
    declined: bool
    generated: bool
    gated: str = ""  # see CaseResult.gated
    tokens_per_s: float = 0.0


@dataclass(frozen=True)
class RunPlan:
    """What a run will use: the serving snapshot, its cases, and a fingerprint of all inputs."""

    persona_id: str
    persona: Persona | None
    suite: EvalSuite | None
    errors: tuple[EvalError, ...]  # evals.yaml problems, and a persona that cannot be run
    fingerprint: str
    retrieval_only: bool


async def plan_run(app: Runtime, persona_id: str, *, retrieval_only: bool = False) -> RunPlan:
    """Read the persona's `evals.yaml` and fingerprint the inputs, without running anything."""
    state = app.registry.state(persona_id)
    persona = state.persona if state else None
    # A broken persona.md fails the run (so CI notices) while its last good snapshot is judged.
    problems = (
        tuple(EvalError(e.path, e.line, e.key, e.message) for e in state.errors) if state else ()
    )
    if persona is None:
        if not problems:
            folder = app.settings.personas_dir / persona_id
            problems = (EvalError(folder, 0, "", f"no persona {persona_id!r}"),)
        return RunPlan(persona_id, None, None, problems, "", retrieval_only)
    suite = await asyncio.to_thread(load_evals, persona.folder)
    if not suite.exists:  # nothing to run, whatever the documents say: skip hashing them
        return RunPlan(persona_id, persona, suite, problems, NO_EVALS, retrieval_only)
    inputs = await asyncio.to_thread(fingerprint, app, persona, suite, retrieval_only)
    return RunPlan(persona_id, persona, suite, problems + suite.errors, inputs, retrieval_only)


async def execute(app: Runtime, plan: RunPlan) -> PersonaRun:
    """Run every valid case of the plan, one after another."""
    started_at = time.time()
    started = time.perf_counter()
    results = []
    if plan.persona is not None and plan.suite is not None:
        for case in plan.suite.cases:
            result = await run_case(
                app.service, plan.persona, case, retrieval_only=plan.retrieval_only
            )
            results.append(result)
    return PersonaRun(
        plan.persona_id,
        tuple(results),
        plan.errors,
        plan.retrieval_only,
        started_at,
        (time.perf_counter() - started) * 1000,
        plan.fingerprint,
        has_evals=plan.suite is not None and plan.suite.exists,
    )


async def run_persona(app: Runtime, persona_id: str, *, retrieval_only: bool = False) -> PersonaRun:
    """Run every valid case of the persona's `evals.yaml` against its current files."""
    return await execute(app, await plan_run(app, persona_id, retrieval_only=retrieval_only))


async def run_case(
    service: ChatService, persona: Persona, case: EvalCase, *, retrieval_only: bool = False
) -> CaseResult:
    """Send the case's turns (or only retrieve, for the last one) and judge the last answer."""
    started = time.perf_counter()
    try:
        if retrieval_only:
            outcome = await asyncio.to_thread(_retrieve, service, persona, case.turns[-1])
        else:
            outcome = await _converse(service, persona, case.turns)
    except (ChatRefused, EngineError, KnowledgeError) as exc:
        message = exc.user_message if isinstance(exc, ChatRefused) else str(exc)
        latency = (time.perf_counter() - started) * 1000
        return CaseResult(case.name, "error", f"could not run: {message}", "", (), latency)
    latency = (time.perf_counter() - started) * 1000
    status, reason = judge(persona, case.checks, outcome, service.settings.retrieval.min_score)
    return CaseResult(
        case.name,
        status,
        reason,
        outcome.answer,
        outcome.sources,
        latency,
        outcome.declined,
        outcome.gated,
        outcome.tokens_per_s,
    )


async def _converse(service: ChatService, persona: Persona, turns: tuple[str, ...]) -> Outcome:
    history: list[ChatMessage] = []
    answer, declined, gated, speed = "", False, "", 0.0
    sources: tuple[str, ...] = ()
    for text in turns:
        incoming = Incoming(
            platform=EVAL_PLATFORM,
            place=f"{EVAL_PLATFORM}/{persona.id}",
            user_id=EVAL_USER,
            text=text,
            persona_id=persona.id,
            remember=False,
            history=tuple(history),
            temperature=EVAL_TEMPERATURE,
            seed=EVAL_SEED,
            fresh=True,
            reader=OPERATOR,
        )
        for attempt in range(BUSY_RETRIES + 1):
            try:
                # Answered by the snapshot judged (`bots eval --adapter` gives it its adapter).
                admission = await service.admit(incoming)
                reply = await service.start(dataclasses.replace(admission, persona=persona))
                break
            except ChatRefused as refused:
                if refused.kind != "busy" or attempt == BUSY_RETRIES:
                    raise
                await asyncio.sleep(refused.retry_after_s)
        async for _ in reply:
            pass
        answer = reply.text
        sources = tuple(dict.fromkeys(hit.path for hit in reply.cited))
        gate = reply.grounding
        declined = reply.finish_reason == "declined" or (
            gate is not None and gate.action == "declined"
        )
        gated = f"{gate.action}: {gate.reason()}" if gate is not None and gate.changed else ""
        speed = reply.usage.tokens_per_s if reply.usage else 0.0
        history += [ChatMessage("user", text), ChatMessage("assistant", answer)]
    return Outcome(answer, sources, declined, generated=True, gated=gated, tokens_per_s=speed)


def _retrieve(service: ChatService, persona: Persona, query: str) -> Outcome:
    # The same floor `ChatService.start` applies before building the prompt: a strict persona
    # declines exactly when no hit reaches it.
    retrieval = service.settings.retrieval
    floor = retrieval.min_score if persona.grounding == "strict" else retrieval.min_score_open
    relevant = [hit for hit in service.retrieve(persona, query) if hit.score >= floor]
    declined = persona.grounding == "strict" and not relevant
    return Outcome("", tuple(dict.fromkeys(h.path for h in relevant)), declined, generated=False)


def judge(
    persona: Persona, checks: Checks, outcome: Outcome, min_score: float
) -> tuple[Status, str]:
    """The verdict on one answer and, unless it passed, why (which check, what was answered)."""
    failures: list[str] = []
    if checks.declines is not None:
        if persona.grounding != "strict":
            failures.append(
                f"declines: only a `grounding: strict` persona declines; {persona.id} is open"
            )
        elif checks.declines and not outcome.declined:
            failures.append("declines: it answered instead of declining")
        elif not checks.declines and outcome.declined:
            why = (
                "the grounding gate found no claim of it in the documents and no passage to quote"
                if outcome.gated
                else f"no document scored {min_score:g} or more"
            )
            failures.append(f"declines: false, but it declined ({why})")
    for path in checks.cites:
        if not any(source == path or source.endswith("/" + path) for source in outcome.sources):
            found = ", ".join(outcome.sources) or "none"
            failures.append(f"cites {path}: not among the sources ({found})")
    unjudged = ""
    if outcome.generated:
        failures += _text_failures(checks, outcome.answer)
    elif checks.needs_answer:
        unjudged = "contains, not_contains and max_chars need the generated answer"
        if not checks.needs_retrieval_only:
            return "skipped", unjudged
    if failures:
        reason = "; ".join(failures)
        if outcome.generated:
            reason += f'; the answer was "{_excerpt(outcome.answer)}"'
        return "fail", reason
    if checks.todo:
        return "todo", checks.todo
    return "pass", unjudged


def _text_failures(checks: Checks, answer: str) -> list[str]:
    failures = [
        f"contains '{p.source}': not in the answer"
        for p in checks.contains
        if p.find(answer) is None
    ]
    for pattern in checks.not_contains:
        found = pattern.find(answer)
        if found is not None:
            failures.append(f"not_contains '{pattern.source}': the answer has '{found}'")
    if checks.max_chars is not None and len(answer) > checks.max_chars:
        failures.append(f"max_chars {checks.max_chars}: the answer has {len(answer)} characters")
    return failures


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= ANSWER_EXCERPT_CHARS else flat[: ANSWER_EXCERPT_CHARS - 1] + "…"


def fingerprint(app: Runtime, persona: Persona, suite: EvalSuite, retrieval_only: bool) -> str:
    """A hash of everything a run depends on: the model, the persona, its cases and its
    documents' text.

    Deterministic runs of equal inputs give equal results, so a save that changed nothing (or
    changed only a file no case depends on) need not run again. Blocks while indexes refresh.
    """
    digest = hashlib.sha256()
    digest.update(f"{persona.content_hash}\0{suite.content_hash}\0{retrieval_only}\0".encode())
    if not retrieval_only:
        model = app.engine.state()
        digest.update(f"{model.name}\0{model.source}\0{model.since}\0".encode())
    try:
        indexes = [app.knowledge.index_for_persona(persona.id)]
        indexes += [app.knowledge.index_for_library(name) for name in persona.knowledge]
    except KnowledgeError as exc:
        digest.update(str(exc).encode())
        return digest.hexdigest()[:16]
    for index in indexes:
        for chunk in index.chunks:
            digest.update(f"{chunk.path}\0{chunk.heading}\0{chunk.text}\0".encode())
    return digest.hexdigest()[:16]
