"""`bots bench`: the benchmark commands, each a thin wrapper over the module that measures."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from bots.cli_options import settings_of, settings_options


@click.group(invoke_without_command=True)
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Benchmarks that print ratios against baselines measured in the same run."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@bench.command("reload")
@click.option("--edits", default=50, show_default=True, help="number of saves to time")
def bench_reload(edits: int) -> None:
    """Write-to-live latency of persona edits through the real watcher."""
    from bots.bench.reload import measure_reload

    result = asyncio.run(measure_reload(edits))
    click.echo(
        f"reload latency over {edits} edits: p50 {result['p50_ms']:.0f} ms, "
        f"p95 {result['p95_ms']:.0f} ms, max {result['max_ms']:.0f} ms"
    )


@bench.command("knowledge")
@click.option(
    "--docs",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=Path("/usr/share/doc/python3.11/html"),
    show_default=True,
    help="a documentation folder (Debian: apt-get install python3.11-doc)",
)
def bench_knowledge(docs: Path) -> None:
    """Cold index, warm restart, one-document refresh and query latency on a real doc set."""
    import tempfile

    from bots.knowledge.bench import run_knowledge_bench

    with tempfile.TemporaryDirectory(prefix="bots-kbench-") as cache:
        result = run_knowledge_bench(docs, Path(cache))
    for key, value in result.items():
        click.echo(f"{key:<28} {value:,.2f}")


@bench.command("injection")
@click.option("--max-tokens", default=96, show_default=True, help="reply length per question")
@click.option("--replies", is_flag=True, help="print every reply under the table")
@settings_options
@click.pass_context
def bench_injection(ctx: click.Context, max_tokens: int, replies: bool) -> None:
    """How the model treats instructions planted in a document (a report, temperature 0)."""
    from bots.bench.injection import format_table, run_injection_bench, summarize

    results = asyncio.run(run_injection_bench(settings_of(ctx), max_tokens=max_tokens))
    click.echo(format_table(summarize(results)))
    if replies:
        for r in results:
            click.echo(f"\n[{r.style}] {r.question}\n{r.reply.strip()}")


@bench.command("instances")
@click.option("--messages", default=200, show_default=True, help="messages per round")
@click.option("--concurrency", default=16, show_default=True, help="messages in flight")
@settings_options
@click.pass_context
def bench_instances(ctx: click.Context, messages: int, concurrency: int) -> None:
    """Messages/s through two instances vs one (database_url, model.endpoint), lease takeover."""
    from bots.bench.instances import measure_instances

    settings = settings_of(ctx)
    if not settings.database_url or not settings.model.endpoint:
        raise click.ClickException(
            "set database_url (BOTS_DATABASE_URL) and model.endpoint (BOTS_MODEL_ENDPOINT): "
            "the instances share that database and that model server"
        )
    result = asyncio.run(
        measure_instances(
            settings.database_url,
            settings.model.endpoint,
            messages=messages,
            concurrency=concurrency,
        )
    )
    base = result.sqlite_per_s
    click.echo(f"one instance, SQLite      {base:8.1f} messages/s ({result.messages} messages)")
    for label, rate in (
        ("one instance, PostgreSQL", result.one_per_s),
        ("two instances, PostgreSQL", result.two_per_s),
    ):
        click.echo(f"{label:<25} {rate:8.1f} messages/s ({rate / base:.2f}x SQLite)")
    click.echo(f"two instances vs one: {result.two_per_s / result.one_per_s:.2f}x")
    takeovers = sorted(result.takeovers_s)
    click.echo(
        f"lease takeover after kill -9: median {takeovers[len(takeovers) // 2] * 1000:.0f} ms, "
        f"max {takeovers[-1] * 1000:.0f} ms over {len(takeovers)} kills"
    )


@bench.command("ask")
@click.argument("persona", default="handbook")
@click.argument("question", default="How do I file an expense report?")
@settings_options
@click.pass_context
def bench_ask(ctx: click.Context, persona: str, question: str) -> None:
    """Tokens/s of `bots ask` against raw llama-cpp-python on the same prompt."""
    from bots.bench.ask import bench_ask as run_bench_ask

    ours, raw = asyncio.run(run_bench_ask(settings_of(ctx), persona, question))
    click.echo(f"{'':<22}{'prompt tok':>11}{'gen tok':>9}{'TTFT ms':>9}{'gen tok/s':>11}")
    for name, run in (("bots ask", ours), ("raw llama-cpp-python", raw)):
        click.echo(
            f"{name:<22}{run.prompt_tokens:>11}{run.completion_tokens:>9}"
            f"{run.ttft_ms:>9.0f}{run.tokens_per_s:>11.1f}"
        )
    if raw.tokens_per_s:
        click.echo(f"ratio (bots / raw) gen tok/s: {ours.tokens_per_s / raw.tokens_per_s:.2f}x")


@bench.command("grounding")
@click.argument("persona", default="handbook")
@click.option(
    "--questions",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="a YAML list of {ask, expect}; default: the shipped questions about the handbook",
)
@click.option("--replies", is_flag=True, help="print the model's and the shown text of each")
@settings_options
@click.pass_context
def bench_grounding(
    ctx: click.Context, persona: str, questions: Path | None, replies: bool
) -> None:
    """A strict persona's answers with the grounding gate against the model's own, same run."""
    from bots.bench.grounding import (
        QUESTIONS_FILE,
        format_table,
        load_questions,
        run_grounding_bench,
    )
    from bots.bench.grounding import replies as reply_lines

    asked = load_questions(questions or QUESTIONS_FILE)
    results = asyncio.run(run_grounding_bench(settings_of(ctx), persona, asked))
    click.echo(format_table(results))
    if replies:
        click.echo("\n" + reply_lines(results))


@bench.command(
    "engine", context_settings={"ignore_unknown_options": True, "allow_extra_args": True}
)
@click.pass_context
def bench_engine(ctx: click.Context) -> None:
    """The engine against llama-server and naive llama-cpp-python (--quick for a smoke test).

    Options: --quick, --model PATH, --threads N, --server PATH (llama-server binary; built with
    `bots bench build-server` when missing), --as-shipped (the default model's Q4_1 file
    instead of the Q8_0 copy bots serves on a CPU; every engine gets the same file),
    --flash-attn auto|on|off (for bots and llama-server alike), --n-gpu-layers N (every engine
    offloaded alike; -1 = all), --streams 1,4,16,64 (the concurrency workload's stream counts).
    """
    from bots.bench.engine import main as engine_main

    sys.exit(engine_main(ctx.args))


@bench.command(
    "adapters", context_settings={"ignore_unknown_options": True, "allow_extra_args": True}
)
@click.pass_context
def bench_adapters(ctx: click.Context) -> None:
    """What a LoRA adapter costs: single stream with vs without, and a mixed workload against
    llama-server (options: --model PATH, --threads N, --server PATH, --no-server)."""
    from bots.bench.adapters import main as adapters_main

    sys.exit(adapters_main(ctx.args))


@bench.command(
    "build-server", context_settings={"ignore_unknown_options": True, "allow_extra_args": True}
)
@click.pass_context
def bench_build_server(ctx: click.Context) -> None:
    """Build llama.cpp's llama-server from the source vendored in the llama-cpp-python sdist."""
    from bots.bench.llama_server import main as server_main

    sys.exit(server_main(ctx.args))


@bench.command("retrieval")
@click.option(
    "--docs",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=Path("/usr/share/doc/python3.11/html"),
    show_default=True,
    help="the documentation folder the questions are about (apt-get install python3.11-doc)",
)
@click.option(
    "--questions",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="a YAML list of {q, kind, pages}; default: the shipped Python docs questions",
)
@click.option("--misses", is_flag=True, help="list the questions whose page missed the sources")
@click.option(
    "--dense",
    is_flag=True,
    help="also measure hybrid retrieval (BM25 + embeddings; needs pip install 'bots[dense]')",
)
def bench_retrieval(docs: Path, questions: Path | None, misses: bool, dense: bool) -> None:
    """hit@k, MRR, index time and query latency against plain whole-page BM25, same run."""
    from bots.bench.retrieval import (
        QUESTIONS_FILE,
        format_table,
        load_questions,
        run_retrieval_bench,
    )

    asked = load_questions(questions or QUESTIONS_FILE)
    scores = run_retrieval_bench(docs, asked, dense=dense)
    click.echo(format_table(scores, len(asked)))
    if misses:
        for score in scores:
            click.echo(f"\n{score.name}: {len(score.misses)} missed")
            for miss in score.misses:
                click.echo(f"  {miss}")


@bench.command("train")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--max-steps", type=click.IntRange(min=0), default=0, help="0: the whole recipe")
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    help="CPU threads (0: one per core; 1 is faster on a busy machine)",
)
@settings_options
@click.pass_context
def bench_train(ctx: click.Context, device: str, max_steps: int, threads: int) -> None:
    """Time, tokens/s and peak memory of `bots train`'s recipe on the shipped example dataset."""
    import dataclasses
    import tempfile

    from bots.engine.model_files import resolve_model_path
    from bots.finetune.recipe import Recipe
    from bots.finetune.run import EXAMPLE_DATA, TrainJob, TrainUnavailable, run_training

    recipe = dataclasses.replace(Recipe(), max_steps=max_steps)
    with tempfile.TemporaryDirectory(prefix="bots-train-bench-") as out:
        job = TrainJob(
            persona="ahoy",
            data=EXAMPLE_DATA,
            model_path=resolve_model_path(settings_of(ctx).model.path),
            version_dir=Path(out) / "1",
            recipe=recipe,
            device=device,
            threads=threads,
        )
        try:
            manifest = run_training(job)
        except TrainUnavailable as exc:
            raise click.ClickException(str(exc)) from exc
    run, timings, memory = manifest["run"], manifest["timings"], manifest["peak_memory_mb"]
    examples = manifest["examples"]
    click.echo(
        f"example dataset: {examples['train']} conversations trained, "
        f"{examples['held_out']} held out"
    )
    click.echo(f"device {device}, base model load {timings['load_s']:.1f} s")
    click.echo(
        f"{run['steps']} steps of {recipe.accumulation}: {timings['train_s']:.1f} s "
        f"({timings['train_s'] / max(run['steps'], 1):.2f} s/step), {run['tokens']} tokens "
        f"({timings['tokens_per_s']:.0f} tokens/s, {run['trained_tokens']} with loss)"
    )
    device_mb = f", device {memory['device']:.0f} MB" if memory["device"] is not None else ""
    click.echo(f"peak memory: RSS {memory['rss']:.0f} MB{device_mb}")
    metrics = manifest["metrics"]
    click.echo(
        f"held-out loss {metrics['held_out_loss_before']:.3f} -> "
        f"{metrics['held_out_loss_after']:.3f}"
    )
