"""`bots bench grounding`: what the grounding gate does to a strict persona's answers.

Each question goes once through the whole pipeline, greedy and unremembered. The model's own text
(the baseline: what a user saw before the gate) and the text shown are judged alike: does it
state the expected fact, and does it hold a claim (a number, amount, date, address, link or
quote) that no document of the persona holds at all, retrieved for the question or not.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

import bots.chat.grounding as grounding
from bots.chat.model import Incoming
from bots.runtime import Runtime
from bots.settings import Settings

QUESTIONS_FILE = Path(__file__).parent / "data" / "grounding_questions.yaml"
EXCERPT_CHARS = 160


@dataclass(frozen=True)
class Question:
    """A question and the ways an answer may state its fact ("" expects nothing)."""

    ask: str
    expect: tuple[str, ...]


@dataclass(frozen=True)
class Judged:
    """One text's verdict: whether it states the fact, and its claims no document holds."""

    right: bool
    invented: tuple[str, ...]


@dataclass(frozen=True)
class GroundingResult:
    """One question: the model's text and the shown text, judged, and what the gate did."""

    question: Question
    generated: str
    shown: str
    before: Judged
    after: Judged
    action: str  # the gate's action; "" when the persona declined without the model
    reason: str


def load_questions(path: Path) -> list[Question]:
    """A YAML list of {ask, expect: [...]}."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of {{ask, expect}}")
    questions = []
    for number, item in enumerate(data, 1):
        if not isinstance(item, dict) or not isinstance(item.get("ask"), str):
            raise ValueError(f"{path}: entry {number} needs an `ask` text")
        expect = item.get("expect") or []
        questions.append(Question(item["ask"], tuple(str(e) for e in expect)))
    return questions


async def run_grounding_bench(
    settings: Settings, persona_id: str, questions: Sequence[Question]
) -> list[GroundingResult]:
    """Ask every question once; judge the generated and the shown text of each."""
    app = Runtime.create(settings)
    await app.start(watch=False)
    try:
        persona = app.service.persona(persona_id)
        indexes = [app.knowledge.index_for_persona(persona.id)]
        indexes += [app.knowledge.index_for_library(name) for name in persona.knowledge]
        chunks = [(index.library, chunk) for index in indexes for chunk in index.chunks]
        documents = [(f"{lib}/{c.path}" if lib else c.path, c.text) for lib, c in chunks]
        context = [part for _, c in chunks for part in (c.title, c.heading)]
        results = []
        for question in questions:
            incoming = Incoming(
                "bench", "", "bench", question.ask, persona.id, remember=False, temperature=0.0
            )
            reply = await app.service.start(incoming)
            async for _ in reply:
                pass
            everything = grounding.evidence(documents, question.ask, context=context)
            gate = reply.grounding
            results.append(
                GroundingResult(
                    question,
                    reply.generated or reply.text,
                    reply.text,
                    judge(reply.generated or reply.text, question, everything),
                    judge(reply.text, question, everything),
                    gate.action if gate else "",
                    gate.reason() if gate else "",
                )
            )
        return results
    finally:
        await app.close()


def judge(text: str, question: Question, everything: grounding.Evidence) -> Judged:
    """Whether `text` states one of the expected forms, and what it claims beyond all documents."""
    right = any(_states(text, expected) for expected in question.expect)
    invented = [
        claim.text
        for sentence in grounding.split_sentences(text)
        for claim in grounding.unsupported(sentence, everything)
    ]
    return Judged(right, tuple(invented))


def format_table(results: Sequence[GroundingResult]) -> str:
    """One row per question, then the totals with and without the gate."""
    lines = [f"{'QUESTION':<58} {'MODEL':<12} {'SHOWN':<12} GATE"]
    for r in results:
        lines.append(
            f"{_cut(r.question.ask, 58):<58} {_mark(r.before):<12} {_mark(r.after):<12} "
            f"{r.action or 'declined (no document)'}"
        )
    n = len(results)
    right_before = sum(r.before.right for r in results)
    right_after = sum(r.after.right for r in results)
    invented_before = sum(bool(r.before.invented) for r in results)
    invented_after = sum(bool(r.after.invented) for r in results)
    changed = [r for r in results if r.action not in ("", "passed", "added")]
    added = sum(r.action == "added" for r in results)
    really = sum(bool(r.before.invented) for r in changed)
    lines += [
        "",
        f"right fact shown: {right_after}/{n} with the gate, {right_before}/{n} without "
        f"({_ratio(right_after, right_before)})",
        f"answers with a claim no document holds: {invented_after}/{n} with the gate, "
        f"{invented_before}/{n} without",
        f"gate dropped sentences of {len(changed)}/{n} answers: {really} held a claim no "
        f"document holds, {len(changed) - really} only claims of documents not retrieved for "
        "the question",
        f"gate added the best passage to {added}/{n} answers that stated none of its facts",
    ]
    return "\n".join(lines)


def replies(results: Sequence[GroundingResult]) -> str:
    """Every question with the model's text, the shown text and why the gate acted."""
    blocks = []
    for r in results:
        block = [f"Q: {r.question.ask}", f"  model: {_flat(r.generated)}"]
        if r.shown != r.generated:
            block.append(f"  shown: {' '.join(r.shown.split())}")
        if r.reason:
            block.append(f"  why:   {r.reason}")
        blocks.append("\n".join(block))
    return "\n".join(blocks)


def _states(text: str, expected: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(expected)}(?!\w)", text, re.IGNORECASE) is not None


def _mark(judged: Judged) -> str:
    fact = "right" if judged.right else "-"
    return f"{fact}+invented" if judged.invented else fact


def _ratio(after: int, before: int) -> str:
    return f"{after / before:.1f}x" if before else "baseline 0"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _flat(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 1] + "…"
