"""The data of evaluations: cases read from `evals.yaml`, and the results of running them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bots.persona.model import PersonaError

EVALS_FILE = "evals.yaml"

Status = Literal["pass", "fail", "error", "skipped", "todo"]
# Statuses that make `bots eval` exit 1: a check failed, or a case could not be run at all.
FAILING: frozenset[Status] = frozenset({"fail", "error"})


@dataclass(frozen=True)
class EvalError(PersonaError):
    """A problem in `evals.yaml` an author can fix, pointing at the file, line and key."""


@dataclass(frozen=True)
class Pattern:
    """A `contains` / `not_contains` entry: literal text, or a regular expression as `/.../`.

    Both match case-insensitively anywhere in the answer.
    """

    source: str  # as written in the file
    regex: re.Pattern[str]

    def find(self, text: str) -> str | None:
        """The matching part of `text`, or None."""
        match = self.regex.search(text)
        return match.group(0) if match else None


@dataclass(frozen=True)
class Checks:
    """What a case's final answer must satisfy; an empty field is not checked."""

    contains: tuple[Pattern, ...] = ()
    not_contains: tuple[Pattern, ...] = ()
    cites: tuple[str, ...] = ()  # document paths, as the sources show them (or their tail)
    declines: bool | None = None
    max_chars: int | None = None
    todo: str = ""  # a case still to be completed by its author (from `bots feedback --to-evals`)

    @property
    def needs_answer(self) -> bool:
        """Whether a check reads the generated text (so retrieval alone cannot judge it)."""
        return bool(self.contains or self.not_contains or self.max_chars is not None)

    @property
    def needs_retrieval_only(self) -> bool:
        """Whether some check can be judged from retrieval alone."""
        return bool(self.cites) or self.declines is not None


@dataclass(frozen=True)
class EvalCase:
    """One case: the user turns to send, in order, and the checks on the last answer."""

    number: int  # 1-based position in the file
    line: int
    name: str  # unique in its file; what results and flips are keyed by
    turns: tuple[str, ...]
    checks: Checks


@dataclass(frozen=True)
class EvalSuite:
    """The valid cases of one `evals.yaml` and every problem found in it."""

    path: Path
    cases: tuple[EvalCase, ...]
    errors: tuple[EvalError, ...]
    content_hash: str  # "" when the file does not exist
    exists: bool


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case: the checks' verdict, why it failed, and what the bot said."""

    name: str
    status: Status
    reason: str
    answer: str
    sources: tuple[str, ...]
    latency_ms: float
    declined: bool = False
    gated: str = ""  # what the grounding gate did to the answer and why; "" when it let it be
    tokens_per_s: float = 0.0  # of the last answer; 0 when nothing was generated

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "answer": self.answer,
            "sources": list(self.sources),
            "declined": self.declined,
            "gated": self.gated,
            "latency_ms": round(self.latency_ms, 1),
            "tokens_per_s": round(self.tokens_per_s, 1),
        }


@dataclass(frozen=True)
class Flip:
    """A case whose verdict changed between two runs of the same persona."""

    name: str
    before: Status
    after: Status
    reason: str  # the new reason (why it fails now), "" when it passes now

    def __str__(self) -> str:
        text = f"{self.before} -> {self.after}: {self.name}"
        return f"{text}: {self.reason}" if self.reason else text

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "before": self.before,
            "after": self.after,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class PersonaRun:
    """One run of a persona's cases against its files as they were when the run began."""

    persona_id: str
    results: tuple[CaseResult, ...]
    errors: tuple[EvalError, ...]  # evals.yaml problems, and a persona that cannot be run
    retrieval_only: bool
    started_at: float
    duration_ms: float
    fingerprint: str  # the inputs (persona, evals, documents) the run saw
    has_evals: bool = True

    @property
    def failed(self) -> bool:
        """Whether anything should make `bots eval` exit 1."""
        return bool(self.errors) or any(r.status in FAILING for r in self.results)

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def gated(self) -> int:
        """Answers the grounding gate changed."""
        return sum(1 for r in self.results if r.gated)

    def as_dict(self) -> dict[str, object]:
        return {
            "persona": self.persona_id,
            "has_evals": self.has_evals,
            "retrieval_only": self.retrieval_only,
            "started_at": self.started_at,
            "duration_ms": round(self.duration_ms, 1),
            "errors": [e.as_dict() for e in self.errors],
            "cases": [r.as_dict() for r in self.results],
            "passed": self.count("pass"),
            "failed": self.count("fail") + self.count("error"),
            "gated": self.gated,
        }


def flips(before: PersonaRun | None, after: PersonaRun) -> list[Flip]:
    """Cases that went from pass to failing or back, matched by name, in the new run's order."""
    if before is None:
        return []
    old = {r.name: r.status for r in before.results}
    changed = []
    for result in after.results:
        previous = old.get(result.name)
        if previous is None:
            continue
        if (previous == "pass") != (result.status == "pass") and (
            previous in FAILING or result.status in FAILING
        ):
            reason = result.reason if result.status != "pass" else ""
            changed.append(Flip(result.name, previous, result.status, reason))
    return changed
