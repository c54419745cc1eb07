"""`bots eval`, and what `bots eval` and `bots feedback` do; `bots.cli` registers the command
and parses `bots feedback`'s flags, then calls these."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sys
import time
from collections.abc import Callable, Sequence

import click

from bots.chat.model import Feedback
from bots.cli_options import settings_of, settings_options_but_model
from bots.evals.feedback import AppendResult, append_feedback_cases, feedback_rows
from bots.evals.model import PersonaRun
from bots.evals.report import as_json, flip_lines, header, persona_summary, rows, total
from bots.evals.runner import run_persona
from bots.evals.watch import EvalEvent, EvalMonitor
from bots.persona.loader import valid_persona_id
from bots.persona.model import PERSONA_FILE
from bots.runtime import Runtime
from bots.settings import Settings
from bots.store.factory import make_store

Echo = Callable[[str], None]
ANSWER_PREVIEW_CHARS = 160


class CommandError(Exception):
    """A mistake on the command line (unknown persona, no database); the message says which."""


async def run_evals(
    settings: Settings,
    persona_ids: Sequence[str],
    *,
    retrieval_only: bool,
    as_json_output: bool,
    echo: Echo,
    note: Echo,
) -> int:
    """Run the cases of the named personas (all, when none is named); return the exit status."""
    started = time.perf_counter()
    app = Runtime.create(settings)
    # Judging from retrieval alone never needs the model: skip loading it.
    await app.start(watch=False, load_model=not retrieval_only)
    try:
        chosen = list(dict.fromkeys(persona_ids)) or [s.id for s in app.registry.states()]
        if not as_json_output:
            echo(header())
        runs: list[PersonaRun] = []
        for persona_id in chosen:
            run = await run_persona(app, persona_id, retrieval_only=retrieval_only)
            runs.append(run)
            if not as_json_output and (run.results or run.errors):
                for line in rows(run):
                    echo(line)
        wall_ms = (time.perf_counter() - started) * 1000
        if as_json_output:
            echo(json.dumps(as_json(runs, wall_ms), ensure_ascii=False, indent=2))
        else:
            for run in runs:
                note(persona_summary(run))
            echo(total(runs, wall_ms))
        return 1 if any(run.failed for run in runs) else 0
    finally:
        await app.close()


async def watch_evals(
    settings: Settings, persona_id: str, *, retrieval_only: bool, echo: Echo
) -> None:
    """Run one persona's cases, then again after every save, printing what flipped; until a
    SIGINT or SIGTERM."""
    app = Runtime.create(settings)
    await app.start(watch=True, load_model=not retrieval_only)
    if app.registry.state(persona_id) is None:
        await app.close()
        raise CommandError(f"no persona {persona_id!r} in {settings.personas_dir}")
    monitor = EvalMonitor(app, retrieval_only=retrieval_only, personas=[persona_id])
    first = True

    def report(event: EvalEvent) -> None:
        nonlocal first
        if event.kind == "started":
            echo(f"running {persona_id}'s evals…")
            return
        if event.run is None:
            return
        if first:
            echo(header())
            for line in rows(event.run):
                echo(line)
            echo(persona_summary(event.run))
            echo(f"watching {settings.personas_dir / persona_id} (Ctrl-C to stop)")
            first = False
        else:
            for line in flip_lines(event.run, event.flips):
                echo(line)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    monitor.add_listener(report)
    monitor.start()
    try:
        monitor.request(persona_id, force=True)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await monitor.close()
        await app.close()


def list_feedback(settings: Settings, persona_id: str | None) -> list[Feedback]:
    """The stored reactions (of one persona), newest first; none when no database exists yet."""
    if not settings.database_url and not settings.db_path.is_file():
        return []
    return asyncio.run(_stored_feedback(settings, persona_id))


async def _stored_feedback(settings: Settings, persona_id: str | None) -> list[Feedback]:
    store = make_store(settings)
    await store.open()
    try:
        return await store.feedback(persona_id)
    finally:
        await store.close()


def print_feedback(feedback: Sequence[Feedback], *, as_json_output: bool, echo: Echo) -> None:
    """One block per reaction: when, persona, platform, up/down, question, then the answer."""
    if as_json_output:
        echo(json.dumps(feedback_rows(feedback), ensure_ascii=False, indent=2))
        return
    for item in feedback:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(item.created_at))
        thumb = "up  " if item.value > 0 else "down"
        echo(f"{when}  {item.persona_id:<12}  {item.platform:<8}  {thumb}  {item.question}")
        answer = " ".join(item.answer.split())
        if len(answer) > ANSWER_PREVIEW_CHARS:
            answer = answer[: ANSWER_PREVIEW_CHARS - 1] + "…"
        echo(f"{'':<18}answer: {answer}")
    ups = sum(1 for f in feedback if f.value > 0)
    echo(f"{len(feedback)} reaction(s): {ups} up, {len(feedback) - ups} down")


def feedback_to_evals(settings: Settings, persona_id: str) -> AppendResult:
    """Append the persona's thumbs-down questions to its `evals.yaml` as TODO cases."""
    folder = settings.personas_dir / persona_id
    if not valid_persona_id(persona_id) or not (folder / PERSONA_FILE).is_file():
        raise CommandError(f"no persona {persona_id!r}: no {folder / PERSONA_FILE}")
    return append_feedback_cases(folder, list_feedback(settings, persona_id))


def describe_append(result: AppendResult) -> str:
    if not result.added:
        already = f" ({result.already_there} already there)" if result.already_there else ""
        return f"no new thumbs-down questions for {result.path}{already}"
    return (
        f"appended {len(result.added)} case(s) to {result.path}: replace each `todo:` with "
        "checks, then run `bots eval`"
    )


@click.command("eval")
@click.argument("personas", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@click.option("--retrieval-only", is_flag=True, help="judge `cites`/`declines` without generating")
@click.option("--watch", is_flag=True, help="re-run one persona's cases on every save")
@click.option(
    "--model",
    "models",
    multiple=True,
    help="a model to run the cases on (GGUF path, catalogue name, or the endpoint's model); "
    "give it twice or more to compare them side by side",
)
@click.option(
    "--adapter",
    "adapters",
    multiple=True,
    help="run the cases with this adapter (a version of the persona's, NAME@VERSION, a .gguf "
    "file, or none) next to without it; give it twice or more to compare exactly those",
)
@settings_options_but_model
@click.pass_context
def eval_cases(
    ctx: click.Context,
    personas: tuple[str, ...],
    as_json: bool,
    retrieval_only: bool,
    watch: bool,
    models: tuple[str, ...],
    adapters: tuple[str, ...],
) -> None:
    """Run the personas' evals.yaml cases (temperature 0, fixed seed); exit 1 on any failure."""
    settings = settings_of(ctx)
    if adapters and (len(models) > 1 or watch or retrieval_only):
        raise click.UsageError("--adapter runs on one model, without --watch or --retrieval-only")
    if adapters:
        from bots.evals.adapters import compare_adapters

        settings = _with_model(settings, models[0]) if models else settings
        compare = compare_adapters(
            settings, adapters, personas, as_json_output=as_json, echo=click.echo, note=_note
        )
        sys.exit(asyncio.run(compare))
    if len(models) > 1:
        if watch or retrieval_only:
            raise click.UsageError("--watch and --retrieval-only run one model, not several")
        sys.exit(_compare(settings, models, personas, as_json))
    if models:
        settings = _with_model(settings, models[0])
    if watch:
        if len(personas) != 1:
            raise click.UsageError("--watch takes exactly one PERSONA")
        try:
            asyncio.run(
                watch_evals(settings, personas[0], retrieval_only=retrieval_only, echo=click.echo)
            )
        except CommandError as exc:
            raise click.ClickException(str(exc)) from exc
        return
    status = asyncio.run(
        run_evals(
            settings,
            personas,
            retrieval_only=retrieval_only,
            as_json_output=as_json,
            echo=click.echo,
            note=_note,
        )
    )
    sys.exit(status)


def _note(line: str) -> None:
    click.echo(line, err=True)


def _with_model(settings: Settings, name: str) -> Settings:
    from bots.modelhub.choose import ChooseError, model_keys, with_model_keys
    from bots.modelhub.commands import hub_access

    try:
        keys = model_keys(name, settings.model, hub_access(settings))
    except ChooseError as exc:
        raise click.ClickException(str(exc)) from exc
    return dataclasses.replace(settings, model=with_model_keys(settings.model, keys))


def _compare(
    settings: Settings, models: tuple[str, ...], personas: tuple[str, ...], as_json: bool
) -> int:
    from bots.evals.compare import compare_models
    from bots.modelhub.choose import ChooseError, model_keys
    from bots.modelhub.commands import hub_access

    access = hub_access(settings)
    try:
        chosen = [(name, model_keys(name, settings.model, access)) for name in models]
    except ChooseError as exc:
        raise click.ClickException(str(exc)) from exc
    return asyncio.run(
        compare_models(
            settings,
            chosen,
            personas,
            as_json_output=as_json,
            echo=click.echo,
            note=_note,
        )
    )
