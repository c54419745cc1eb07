"""`bots train PERSONA`: a LoRA adapter from the persona's export, as a new adapter version."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from pathlib import Path

import click

from bots.cli_options import settings_of, settings_options
from bots.engine.model_files import ModelNotFound, resolve_model_path
from bots.evals.adapters import adapter_runs, verdict
from bots.evals.compare import report
from bots.evals.loader import load_evals
from bots.finetune.dataset import DataError
from bots.finetune.manifest import (
    ResumeRefused,
    new_version,
    persona_adapters,
    unfinished_version,
)
from bots.finetune.recipe import Recipe
from bots.finetune.run import TrainJob, TrainUnavailable, require_train_extra, run_training
from bots.progress import Progress
from bots.settings import Settings

EXPORTS_FOLDER = "exports"  # where `bots export PERSONA` writes by default
log = logging.getLogger(__name__)


@click.command("train")
@click.argument("persona")
@click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False),
    help="the export folder to train on (default: <data_dir>/exports/PERSONA)",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=Recipe.epochs, show_default=True)
@click.option(
    "--max-steps", type=click.IntRange(min=0), default=0, help="stop after this many steps"
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=Recipe.learning_rate,
    show_default=True,
    help="peak learning rate",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=Recipe.accumulation,
    show_default=True,
    help="conversations per step (one at a time, gradients accumulated)",
)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    help="CPU threads (0: one per core; 1 is faster on a busy machine)",
)
@click.option("--resume", is_flag=True, help="go on with the last run that did not finish")
@click.option(
    "--eval/--no-eval",
    "evaluate",
    default=True,
    help="run the persona's evals without and with the new adapter at the end (default: on)",
)
@settings_options
@click.pass_context
def train(
    ctx: click.Context,
    persona: str,
    data: Path | None,
    device: str,
    epochs: int,
    max_steps: int,
    lr: float,
    batch: int,
    threads: int,
    resume: bool,
    evaluate: bool,
) -> None:
    """Train a LoRA adapter for PERSONA on the shared model (needs the train extra)."""
    settings = settings_of(ctx)
    try:
        require_train_extra()
        model_path = resolve_model_path(settings.model.path)
    except (TrainUnavailable, ModelNotFound) as exc:
        raise click.ClickException(str(exc)) from exc
    folder = persona_adapters(settings.data_dir, persona)
    version_dir = unfinished_version(folder) if resume else None
    if resume and version_dir is None:
        raise click.ClickException(f"{folder}: no unfinished run of {persona} to resume")
    recipe = dataclasses.replace(
        Recipe(), epochs=epochs, max_steps=max_steps, learning_rate=lr, accumulation=batch
    )
    job = TrainJob(
        persona=persona,
        data=data if data is not None else settings.data_dir / EXPORTS_FOLDER / persona,
        model_path=model_path,
        version_dir=version_dir or new_version(folder),
        recipe=recipe,
        device=device,
        resume=resume,
        threads=threads,
    )
    click.echo(f"training {persona} version {job.version_dir.name} from {job.data}", err=True)
    bar = _LossBar()
    try:
        manifest = run_training(job, on_step=bar)
    except (DataError, TrainUnavailable, ResumeRefused) as exc:
        with contextlib.suppress(OSError):
            job.version_dir.rmdir()  # a new version refused before its first file: no trace
        raise click.ClickException(str(exc)) from exc
    finally:
        bar.finish()
    metrics, timings = manifest["metrics"], manifest["timings"]
    click.echo(
        f"{persona}@{manifest['version']}: held-out loss {metrics['held_out_loss_before']:.3f} "
        f"-> {metrics['held_out_loss_after']:.3f}, {manifest['run']['steps']} steps in "
        f"{timings['train_s']:.0f} s ({timings['tokens_per_s']:.0f} tokens/s), "
        f"peak memory {manifest['peak_memory_mb']['rss']:.0f} MB\n"
        f"  {job.version_dir}/adapter.gguf (llama.cpp), peft/ (vLLM), manifest.json\n"
        f"  to serve it: adapter: {persona}@{manifest['version']} in persona.md"
    )
    if evaluate:
        compare_after_training(settings, persona, int(manifest["version"]))


def compare_after_training(settings: Settings, persona: str, version: int) -> None:
    """The persona's evals without and with the new version, side by side, and the verdict."""
    suite = load_evals(settings.personas_dir / persona)
    if not suite.cases:
        click.echo(
            f"  no eval cases in {suite.path}: write some, then compare with "
            f"`bots eval {persona} --adapter {version}`"
        )
        return
    results, wall_ms = asyncio.run(
        adapter_runs(settings, [str(version)], [persona], note=_to_stderr)
    )
    report(settings, results, wall_ms, as_json_output=False, echo=click.echo, compared="adapters")
    click.echo(verdict(results[0], results[1]))


def _to_stderr(line: str) -> None:
    click.echo(line, err=True)


class _LossBar:
    """The run's progress bar with the last step's loss, made at the first step (when the
    total is known; a resumed run starts part way)."""

    def __init__(self) -> None:
        self.bar: Progress | None = None

    def __call__(self, done: int, total: int, loss: float) -> None:
        if self.bar is None:
            self.bar = Progress("training", total, "steps", logger=log)
            self.bar.done = done - 1
        self.bar.label = f"training, loss {loss:.3f}"
        self.bar.advance()

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.finish()
