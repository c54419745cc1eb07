"""The Evals tab's comparison table: the last `bots eval --model A --model B` (or `bots eval
PERSONA --adapter 3`) run, for the persona shown (read from the JSON the command keeps in the
data folder); and the persona's adapter with its manifest."""

from __future__ import annotations

from typing import Any

from bots.adapters.web.views import clock, h
from bots.evals.report import LABELS, latency
from bots.persona.model import Persona


def comparison(document: dict[str, Any] | None, persona_id: str) -> str:
    """A table of this persona's cases, one column per model; "" when no comparison ran it."""
    if not document:
        return ""
    columns: list[tuple[str, dict[str, dict[str, Any]]]] = []
    for model in document.get("models", []):
        for run in model.get("personas", []):
            if run.get("persona") == persona_id:
                cases = {c["name"]: c for c in run.get("cases", [])}
                columns.append((str(model.get("model", "?")), cases))
    if not columns:
        return ""
    names = list(dict.fromkeys(name for _, cases in columns for name in cases))
    head = "".join(f"<th>{h(label)}</th>" for label, _ in columns)
    rows = "".join(
        f"<tr><td>{h(name)}</td>" + "".join(_cell(cases.get(name)) for _, cases in columns)
        + "</tr>"
        for name in names
    )  # fmt: skip
    passed = "".join(
        f"<td>{sum(c['status'] == 'pass' for c in cases.values())}/{len(cases)}</td>"
        for _, cases in columns
    )
    when = clock(float(document.get("finished_at", 0)))
    what, command = (
        ("Adapters", f"bots eval {persona_id} --adapter …")
        if document.get("compared") == "adapters"
        else ("Models", "bots eval --model … --model …")
    )
    return (
        f'<h3 class="comparison-head">{what} compared <span class="meta">at {when}, by '
        f"<code>{h(command)}</code></span></h3>"
        f'<table class="evals comparison"><thead><tr><th>Case</th>{head}</tr></thead>'
        f"<tbody>{rows}<tr><td>passed</td>{passed}</tr></tbody></table>"
    )


def _cell(case: dict[str, Any] | None) -> str:
    if case is None:
        return "<td>-</td>"
    status = str(case.get("status", "error"))
    speed = f" · {case['tokens_per_s']:.0f} tok/s" if case.get("tokens_per_s") else ""
    reason = f'<div class="reason">{h(case["reason"])}</div>' if case.get("reason") else ""
    label = LABELS.get(status, status)  # type: ignore[call-overload]
    return (
        f'<td class="status-{h(status)}">{h(label)} '
        f"{latency(float(case.get('latency_ms', 0)))}{speed}{reason}</td>"
    )


def adapter(persona: Persona | None) -> str:
    """The persona's adapter (`adapter:` in persona.md) and its manifest; "" without one."""
    if persona is None or persona.adapter is None:
        return ""
    chosen = persona.adapter
    rows = "".join(f"<tr><td>{h(k)}</td><td>{h(v)}</td></tr>" for k, v in chosen.manifest)
    manifest = f'<table class="manifest"><tbody>{rows}</tbody></table>' if rows else ""
    return (
        f'<h3 class="adapter-head">Adapter <code>{h(chosen.name)}</code> '
        f'<span class="meta">scale {chosen.scale:g} · {h(str(chosen.path))}</span></h3>{manifest}'
    )
