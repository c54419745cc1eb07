"""`bots eval --model A --model B ...`: the same cases on each model in turn, side by side.

Each model is loaded alone (one after another, so the machine needs room for one at a time)
and runs every named persona's cases exactly as `bots eval` does. The table has a column per
model (verdict, latency, tokens/s), the checks that failed under each row, and a last line per
model; `--json` gives the same, and the comparison is kept in the data folder, where the
workbench's Evals tab shows the last one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bots.engine.base import EngineError
from bots.evals.model import CaseResult, PersonaRun
from bots.evals.report import LABELS, latency
from bots.evals.runner import run_persona
from bots.modelhub.choose import with_model_keys
from bots.runtime import Runtime
from bots.settings import Settings

Echo = Callable[[str], None]
COMPARISON_FILE = "last-comparison.json"
CASE_WIDTH = 36
CELL_WIDTH = 24


@dataclass(frozen=True)
class ModelRun:
    """One model's runs of the personas' cases."""

    label: str
    served: str  # the file or endpoint model that answered
    load_ms: float
    runs: tuple[PersonaRun, ...]
    load_error: str = ""  # the model did not load: no case ran on it

    @property
    def cases(self) -> int:
        return sum(len(r.results) for r in self.runs)

    @property
    def passed(self) -> int:
        return sum(r.count("pass") for r in self.runs)

    @property
    def failed(self) -> bool:
        return bool(self.load_error) or any(r.failed for r in self.runs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.label,
            "served": self.served,
            "load_ms": round(self.load_ms, 1),
            "passed": self.passed,
            "cases": self.cases,
            "failed": self.failed,
            "load_error": self.load_error,
            "personas": [r.as_dict() for r in self.runs],
        }


def comparison_path(settings: Settings) -> Path:
    return settings.data_dir / "evals" / COMPARISON_FILE


async def compare_models(
    settings: Settings,
    models: Sequence[tuple[str, dict[str, str]]],
    persona_ids: Sequence[str],
    *,
    as_json_output: bool,
    echo: Echo,
    note: Echo,
) -> int:
    """Run the cases on each (label, [model] keys) in turn; 1 when any model failed a case."""
    started = time.perf_counter()
    results: list[ModelRun] = []
    for label, keys in models:
        note(f"loading {label} ...")
        results.append(await _run_model(settings, label, keys, persona_ids))
    wall_ms = (time.perf_counter() - started) * 1000
    return report(settings, results, wall_ms, as_json_output=as_json_output, echo=echo)


def report(
    settings: Settings,
    results: Sequence[ModelRun],
    wall_ms: float,
    *,
    as_json_output: bool,
    echo: Echo,
    compared: str = "models",
) -> int:
    """Keep the comparison for the workbench and print it (table or JSON); 1 when any column
    failed a case. `compared` says what the columns are: "models" or "adapters"."""
    document = {
        "compared": compared,
        "models": [r.as_dict() for r in results],
        "wall_ms": round(wall_ms, 1),
        "finished_at": time.time(),
    }
    path = comparison_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, ensure_ascii=False, indent=2), encoding="utf-8")
    if as_json_output:
        echo(json.dumps(document, ensure_ascii=False, indent=2))
    else:
        for line in table(results):
            echo(line)
        winners = [r.label for r in results if not r.failed and r.cases]
        nobody = f"no {compared.removesuffix('s')} passes"
        verdict = f"passing every case: {', '.join(winners)}" if winners else nobody
        echo(f"{verdict} ({latency(wall_ms)})")
    return 1 if any(r.failed for r in results) else 0


async def _run_model(
    settings: Settings, label: str, keys: dict[str, str], persona_ids: Sequence[str]
) -> ModelRun:
    model = with_model_keys(settings.model, keys)
    started = time.perf_counter()
    try:
        app = Runtime.create(dataclasses.replace(settings, model=model))
    except (OSError, ValueError) as exc:  # no such file, a bad engine setting
        return ModelRun(label, "", 0.0, (), str(exc))
    try:
        await app.start(watch=False)
    except EngineError as exc:  # not a GGUF, truncated, no chat template, out of memory
        await app.close()
        return ModelRun(label, "", (time.perf_counter() - started) * 1000, (), str(exc))
    load_ms = (time.perf_counter() - started) * 1000
    try:
        chosen = list(dict.fromkeys(persona_ids)) or [s.id for s in app.registry.states()]
        runs = tuple([await run_persona(app, persona_id) for persona_id in chosen])
        return ModelRun(label, app.engine.status().model, load_ms, runs)
    finally:
        await app.close()


def table(results: Sequence[ModelRun]) -> list[str]:
    """Rows of `persona / case` with one cell per model; failed checks under the row."""
    head = f"{'CASE':<{CASE_WIDTH}}" + "".join(
        f"  {_cut(r.label, CELL_WIDTH):<{CELL_WIDTH}}" for r in results
    )
    lines = [head]
    for run in results:
        if run.load_error:
            lines.append(f"{run.label}: could not load: {run.load_error}")
        for persona in run.runs:
            lines += [f"{run.label}: {persona.persona_id}: error: {e}" for e in persona.errors]
    for key in _case_keys(results):
        cells = [_result(r, key) for r in results]
        lines.append(
            f"{_cut('/'.join(key), CASE_WIDTH):<{CASE_WIDTH}}"
            + "".join(f"  {_cell(c):<{CELL_WIDTH}}" for c in cells)
        )
        for run, cell in zip(results, cells, strict=True):
            if cell is not None and cell.status != "pass" and cell.reason:
                lines.append(f"    {run.label}: {cell.reason}")
    lines.append(
        f"{'PASSED':<{CASE_WIDTH}}"
        + "".join(f"  {f'{r.passed}/{r.cases}':<{CELL_WIDTH}}" for r in results)
    )
    lines.append(
        f"{'LOAD':<{CASE_WIDTH}}"
        + "".join(f"  {latency(r.load_ms):<{CELL_WIDTH}}" for r in results)
    )
    return lines


def _case_keys(results: Sequence[ModelRun]) -> list[tuple[str, str]]:
    keys: dict[tuple[str, str], None] = {}
    for run in results:
        for persona in run.runs:
            for case in persona.results:
                keys.setdefault((persona.persona_id, case.name), None)
    return list(keys)


def _result(run: ModelRun, key: tuple[str, str]) -> CaseResult | None:
    for persona in run.runs:
        if persona.persona_id == key[0]:
            return next((c for c in persona.results if c.name == key[1]), None)
    return None


def _cell(result: CaseResult | None) -> str:
    if result is None:
        return "-"
    speed = f" {result.tokens_per_s:.0f} tok/s" if result.tokens_per_s else ""
    return f"{LABELS[result.status]} {latency(result.latency_ms)}{speed}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def last_comparison(settings: Settings) -> dict[str, Any] | None:
    """The comparison `bots eval --model ...` last saved, or None."""
    path = comparison_path(settings)
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data
