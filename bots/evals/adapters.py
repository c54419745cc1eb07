"""`bots eval PERSONA --adapter 3`: the persona's cases without and with an adapter, side by side.

The model loads once; each adapter runs every named persona's cases as `bots eval` does, with
the persona's snapshot given that adapter instead of the one its persona.md names (`none` for
the base model). One `--adapter` compares it against none; several compare exactly those. A
version number means the persona's own (`3`: `PERSONA@3`); `NAME@VERSION` and a `.gguf` path
are taken as persona.md takes them. The table, `--json` and the copy the workbench shows are
`bots eval --model`'s (compare.py), with a column per adapter.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from bots.engine.adapter_files import adapter_files
from bots.evals.compare import Echo, ModelRun, report
from bots.evals.model import PersonaRun
from bots.evals.runner import execute, plan_run
from bots.persona.adapter import AdapterProblem, parse_adapter
from bots.runtime import Runtime
from bots.settings import Settings

NO_ADAPTER = "none"


def adapter_choices(adapters: Sequence[str]) -> list[str]:
    """The columns: one adapter is compared against none."""
    chosen = list(dict.fromkeys(adapters))
    return [NO_ADAPTER, *chosen] if len(chosen) == 1 and chosen[0] != NO_ADAPTER else chosen


def _reference(choice: str, persona_id: str) -> str:
    return f"{persona_id}@{choice}" if choice.isdigit() else choice


async def compare_adapters(
    settings: Settings,
    adapters: Sequence[str],
    persona_ids: Sequence[str],
    *,
    as_json_output: bool,
    echo: Echo,
    note: Echo,
) -> int:
    """Run the cases under each adapter in turn on one loaded model; 1 when any column failed."""
    results, wall_ms = await adapter_runs(settings, adapters, persona_ids, note=note)
    return report(
        settings, results, wall_ms, as_json_output=as_json_output, echo=echo, compared="adapters"
    )


async def adapter_runs(
    settings: Settings, adapters: Sequence[str], persona_ids: Sequence[str], *, note: Echo
) -> tuple[list[ModelRun], float]:
    """Each adapter's runs of the personas' cases (a column each), and the wall time in ms."""
    started = time.perf_counter()
    note("loading the model ...")
    app = Runtime.create(settings)
    await app.start(watch=False)
    load_ms = (time.perf_counter() - started) * 1000
    files = adapter_files(settings)
    results: list[ModelRun] = []
    try:
        chosen = list(dict.fromkeys(persona_ids)) or [s.id for s in app.registry.states()]
        for choice in adapter_choices(adapters):
            runs: list[PersonaRun] = []
            problems: list[str] = []
            for persona_id in chosen:
                plan = await plan_run(app, persona_id)
                if plan.persona is None:
                    runs.append(await execute(app, plan))
                    continue
                try:
                    adapter = parse_adapter(
                        _reference(choice, persona_id), plan.persona.folder, files
                    )
                except AdapterProblem as exc:
                    problems.append(f"{persona_id}: {exc}")
                    continue
                persona = dataclasses.replace(plan.persona, adapter=adapter)
                runs.append(await execute(app, dataclasses.replace(plan, persona=persona)))
            model = app.engine.status().model
            served = model if choice == NO_ADAPTER else f"{model} + {choice}"
            results.append(ModelRun(choice, served, load_ms, tuple(runs), "; ".join(problems)))
    finally:
        await app.close()
    return results, (time.perf_counter() - started) * 1000


def verdict(base: ModelRun, tuned: ModelRun) -> str:
    """Whether to switch the persona to the adapter, from its evals with and without it."""
    if tuned.load_error:
        return f"keep the base model: the adapter did not serve ({tuned.load_error})"
    score = (
        f"{tuned.passed}/{tuned.cases} cases with the adapter, {base.passed}/{base.cases} without"
    )
    if tuned.passed > base.passed:
        return f"switch: {score}"
    if tuned.passed < base.passed:
        return f"keep the base model: {score}"
    return f"no difference the evals see ({score}): switch if its answers read better to you"
