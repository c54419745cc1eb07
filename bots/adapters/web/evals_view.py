"""The Evals tab's results: the persona's last eval run, one row per case, flips marked (the
comparison of models or adapters is `comparison_view.py`)."""

from __future__ import annotations

from pathlib import Path

from bots.adapters.web.views import EvalView, clock, h, problems
from bots.evals.model import FAILING, CaseResult, Flip
from bots.evals.report import latency


def evals(view: EvalView, root: Path) -> str:
    """The last eval run: a summary, the evals.yaml problems, one row per case, flips marked."""
    status = '<span class="badge running">running…</span>' if view.running else ""
    run = view.run
    if run is None:
        waiting = "Running the evals…" if view.running else "No run yet."
        return f'<div class="evals-head">{status}</div><p class="empty">{waiting}</p>'
    if not run.has_evals and not run.errors:
        return (
            f'<div class="evals-head">{status}</div><p class="empty">No <code>evals.yaml</code> '
            "in this persona's folder. Add one, e.g.:</p><pre>"
            "- ask: How many vacation days do I get?\n  cites: vacation.md\n"
            "- ask: Who won the world cup?\n  declines: true</pre>"
        )
    flipped = {f.name: f for f in view.flips}
    failing = sum(1 for r in run.results if r.status in FAILING)
    summary = (
        f"{run.count('pass')} passed, {failing} failing of {len(run.results)} · ran at "
        f"{clock(run.started_at)} in "
        f"{latency(run.duration_ms)}{' (retrieval only)' if run.retrieval_only else ''}"
    )
    rows = "".join(_eval_row(r, flipped.get(r.name)) for r in run.results)
    flips_note = (
        f'<p class="flips">{len(view.flips)} flipped since the previous run.</p>'
        if view.flips
        else ""
    )
    return (
        f'<div class="evals-head"><span class="summary">{h(summary)}</span> {status}</div>'
        f"{problems(run.errors, root)}{flips_note}"
        '<table class="evals"><thead><tr><th>Case</th><th>Result</th><th>Latency</th></tr>'
        f"</thead><tbody>{rows}</tbody></table>"
    )


def _eval_row(result: CaseResult, flip: Flip | None) -> str:
    classes = f"status-{result.status}" + (" flipped" if flip else "")
    was = f' <span class="was">was {h(flip.before)}</span>' if flip else ""
    reason = f'<div class="reason">{h(result.reason)}</div>' if result.reason else ""
    answer = (
        f"<details><summary>answer</summary><p>{h(result.answer)}</p></details>"
        if result.answer
        else ""
    )
    cited = (
        f'<div class="cited">sources: {h(", ".join(result.sources))}</div>'
        if result.sources
        else ""
    )
    return (
        f'<tr class="{classes}" data-case="{h(result.name)}"><td>{h(result.name)}{reason}{cited}'
        f'{answer}</td><td><span class="badge {h(result.status)}">{h(result.status)}</span>{was}'
        f"</td><td>{latency(result.latency_ms)}</td></tr>"
    )
