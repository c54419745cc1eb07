"""How eval runs read in a terminal (a table, flips) and to machines (JSON)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from bots.evals.model import FAILING, Flip, PersonaRun, Status

CASE_WIDTH = 44
PERSONA_WIDTH = 12
REASON_INDENT = " " * (PERSONA_WIDTH + 2)
LABELS: dict[Status, str] = {
    "pass": "pass",
    "fail": "FAIL",
    "error": "ERROR",
    "skipped": "skip",
    "todo": "todo",
}

COUNTED: tuple[tuple[Status, str], ...] = (
    ("pass", "passed"),
    ("fail", "failed"),
    ("error", "errors"),
    ("todo", "todo"),
    ("skipped", "skipped"),
)


def latency(ms: float) -> str:
    """Milliseconds under a second, seconds with one decimal above."""
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def header() -> str:
    return f"{'PERSONA':<{PERSONA_WIDTH}}  {'CASE':<{CASE_WIDTH}}  {'RESULT':<6}  LATENCY"


def rows(run: PersonaRun) -> list[str]:
    """The table lines of one persona: its evals.yaml problems, then one row per case.

    A case that did not pass gets its reason (which check, what the answer was) underneath.
    """
    lines = [
        f"{_cut(run.persona_id, PERSONA_WIDTH):<{PERSONA_WIDTH}}  error: {e}" for e in run.errors
    ]
    for result in run.results:
        lines.append(
            f"{_cut(run.persona_id, PERSONA_WIDTH):<{PERSONA_WIDTH}}  "
            f"{_cut(result.name, CASE_WIDTH):<{CASE_WIDTH}}  "
            f"{LABELS[result.status]:<6}  {latency(result.latency_ms):>7}"
        )
        if result.status != "pass" and result.reason:
            lines.append(REASON_INDENT + result.reason)
        if result.gated:
            lines.append(REASON_INDENT + "gated " + result.gated)
    return lines


def persona_summary(run: PersonaRun) -> str:
    if not run.has_evals and not run.errors:
        return f"{run.persona_id}: no evals.yaml"
    counts = ", ".join(
        f"{run.count(status)} {word}"
        for status, word in COUNTED
        if run.count(status) or status == "pass"
    )
    problems = f", {len(run.errors)} file problem(s)" if run.errors else ""
    gated = f", {run.gated} gated" if run.gated else ""
    return f"{run.persona_id}: {counts}{gated}{problems} ({latency(run.duration_ms)})"


def total(runs: Sequence[PersonaRun], wall_ms: float) -> str:
    cases = sum(len(r.results) for r in runs)
    failing = sum(1 for r in runs for c in r.results if c.status in FAILING)
    problems = sum(len(r.errors) for r in runs)
    verdict = "FAILED" if failing or problems else "ok"
    return (
        f"{verdict}: {cases} case(s) in {len(runs)} persona(s), {failing} failing, "
        f"{problems} file problem(s), {latency(wall_ms)}"
    )


def flip_lines(run: PersonaRun, changed: Sequence[Flip], *, now: float | None = None) -> list[str]:
    """What `--watch` prints after a re-run: the summary, then each flip (or that none flipped)."""
    stamp = time.strftime("%H:%M:%S", time.localtime(now if now is not None else time.time()))
    lines = [f"[{stamp}] {persona_summary(run)}"]
    lines += [f"  error: {e}" for e in run.errors]
    if not changed:
        lines.append("  no flips")
    for flip in changed:
        mark = "FIXED" if flip.after == "pass" else "BROKE"
        lines.append(f"  {mark} {flip}")
    return lines


def as_json(runs: Sequence[PersonaRun], wall_ms: float) -> dict[str, Any]:
    """Every run with its cases, plus totals."""
    return {
        "personas": [r.as_dict() for r in runs],
        "passed": sum(r.count("pass") for r in runs),
        "failed": sum(1 for r in runs for c in r.results if c.status in FAILING),
        "todo": sum(r.count("todo") for r in runs),
        "skipped": sum(r.count("skipped") for r in runs),
        "problems": sum(len(r.errors) for r in runs),
        "gated": sum(r.gated for r in runs),
        "ok": not any(r.failed for r in runs),
        "duration_ms": round(wall_ms, 1),
    }


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
