"""The `bots` command: chat, ask, new, check, serve, status, feedback; `bench`, from
`bots.bench.commands`; `eval`, from `bots.evals.commands`; `model`, from
`bots.modelhub.commands`; `db`, from `bots.store.commands`; `export`, from
`bots.finetune.commands`; and `train`, from `bots.finetune.train_commands`."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import click

from bots.bench.commands import bench
from bots.cli_options import (
    flags_of,
    settings_of,
    settings_options,
    settings_reader,
)
from bots.evals.commands import (
    CommandError,
    describe_append,
    eval_cases,
    feedback_to_evals,
    list_feedback,
    print_feedback,
)
from bots.evals.feedback import AppendRefused
from bots.finetune.commands import export
from bots.finetune.train_commands import train
from bots.logs import setup_logging
from bots.modelhub.commands import model
from bots.settings import SETTINGS_FILE, Settings
from bots.store.commands import db


@click.group()
@settings_options
def main() -> None:
    """Turn a folder of instructions and documents into a chat bot.

    The folder, model and logging options can also follow the subcommand (`bots serve
    --personas p`); there they win over the same option given before it.
    """


main.add_command(bench)
main.add_command(eval_cases)
main.add_command(model)
main.add_command(db)
main.add_command(export)
main.add_command(train)


def default_persona(settings: Settings, registry_ids: list[str]) -> str:
    if settings.default_persona:
        return settings.default_persona
    if not registry_ids:
        raise click.ClickException(f"no personas in {settings.personas_dir}: try `bots new NAME`")
    return registry_ids[0]


@main.command()
@click.argument("persona", required=False)
@settings_options
@click.pass_context
def chat(ctx: click.Context, persona: str | None) -> None:
    """Chat in the terminal (streams; /persona NAME, /reset, /sources, /quit)."""
    from bots.adapters.terminal import TerminalChat
    from bots.runtime import Runtime

    settings = settings_of(ctx)

    async def run() -> None:
        app = Runtime.create(settings)
        await app.start()
        try:
            chosen = persona or default_persona(settings, [p.id for p in app.registry.personas()])
            for error in app.registry.errors():
                click.echo(f"warning: {error}", err=True)
            if app.registry.get(chosen) is None:
                raise click.ClickException(f"no persona {chosen!r} in {settings.personas_dir}")
            await TerminalChat(app, chosen).run()
        finally:
            await app.close()

    asyncio.run(run())


@main.command()
@click.argument("persona")
@click.argument("question")
@click.option("--json", "as_json", is_flag=True, help="print answer, sources and timings as JSON")
@click.option("--temperature", type=float, help="override the persona's temperature")
@click.option("--seed", type=int, help="sampling seed, for repeatable answers")
@click.option("--max-tokens", type=int, help="reply length limit")
@settings_options
@click.pass_context
def ask(
    ctx: click.Context,
    persona: str,
    question: str,
    as_json: bool,
    temperature: float | None,
    seed: int | None,
    max_tokens: int | None,
) -> None:
    """Ask one question and print the answer (streamed unless --json)."""
    from bots.chat.model import ChatRefused, Incoming
    from bots.engine.base import EngineError
    from bots.knowledge.audience import OPERATOR
    from bots.runtime import Runtime

    settings = settings_of(ctx)

    async def run() -> int:
        started = time.perf_counter()
        app = Runtime.create(settings)
        await app.start(watch=False)
        ready = time.perf_counter()
        try:
            incoming = Incoming(
                "cli",
                "",
                "cli",
                question,
                persona,
                remember=False,
                temperature=temperature,
                seed=seed,
                max_tokens=max_tokens,
                reader=OPERATOR,
            )
            reply = await app.service.start(incoming)
            async for piece in reply:
                if not as_json:
                    click.echo(piece, nl=False)
        except ChatRefused as exc:
            raise click.ClickException(exc.user_message) from exc
        except EngineError as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            await app.close()
        done = time.perf_counter()
        if not as_json:
            click.echo()
            return 0
        usage = reply.usage
        timings = {
            "load_ms": round((ready - started) * 1000, 1),
            "total_ms": round((done - ready) * 1000, 1),
            "ttft_ms": round(usage.ttft_ms, 1) if usage else None,
            "prompt_tokens": usage.prompt_tokens if usage else 0,
            "cached_tokens": usage.cached_tokens if usage else 0,
            "completion_tokens": usage.completion_tokens if usage else 0,
            "tokens_per_s": round(usage.tokens_per_s, 1) if usage else None,
        }
        out = {
            "persona": reply.persona.id,
            "answer": reply.text,
            "sources": [
                {"path": s["path"], "title": s["title"], "score": s["score"]}
                for s in reply.source_dicts()
            ],
            "timings": timings,
        }
        if reply.grounding is not None:
            out["grounding"] = reply.grounding.as_dict()
        click.echo(json.dumps(out, ensure_ascii=False, indent=2))
        return 0

    sys.exit(asyncio.run(run()))


@main.command()
@click.argument("name")
@settings_options
@click.pass_context
def new(ctx: click.Context, name: str) -> None:
    """Create personas/NAME/persona.md from a commented template."""
    from bots.persona.scaffold import ScaffoldError, new_persona

    settings = settings_of(ctx)
    try:
        path = new_persona(settings.personas_dir, name)
    except ScaffoldError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"created {path}: edit it, drop documents next to it, then `bots chat {name}`")


@main.command()
@settings_options
@click.pass_context
def check(ctx: click.Context) -> None:
    """Validate every persona and library; print problems as file:line; exit 1 if any."""
    from bots.checks import run_checks

    settings = settings_of(ctx)
    problems, summary = run_checks(settings)
    for problem in problems:
        click.echo(problem)
    click.echo(summary, err=True)
    sys.exit(1 if problems else 0)


@main.command()
@click.option("--host", help="address to bind (default 127.0.0.1)")
@click.option("--port", type=int, help="port (default 8321)")
@click.option("--log-json", is_flag=True, default=None, help="JSON log lines")
@settings_options
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, log_json: bool | None) -> None:
    """Run the HTTP API, the workbench and every configured adapter (Discord, Slack).

    Exits 0 after SIGTERM/SIGINT, non-zero when the model cannot be loaded or brought back.
    """
    from bots.engine.base import EngineError
    from bots.engine.model_files import ModelNotFound
    from bots.model_reload import SettingsSource
    from bots.runtime import Runtime
    from bots.serve import serve as run_server
    from bots.store.base import StoreUnavailable

    overrides = {"server.host": host, "server.port": port, "server.log_json": log_json}
    settings = settings_of(ctx, **overrides)
    setup_logging(
        max(flags_of(ctx).verbose, 1),
        json_logs=settings.server.log_json,
        secrets=settings.secrets(),
    )
    source = SettingsSource(
        flags_of(ctx).config or settings.root / SETTINGS_FILE, settings_reader(ctx, **overrides)
    )
    try:
        exit_status = asyncio.run(run_server(Runtime.create(settings), settings_source=source))
    except (EngineError, ModelNotFound) as exc:
        raise click.ClickException(f"the model could not be started: {exc}") from exc
    except StoreUnavailable as exc:
        raise click.ClickException(f"the conversation store cannot be used: {exc}") from exc
    sys.exit(exit_status)


@main.command()
@click.option("--url", default=None, help="server address (default from settings)")
@settings_options
@click.pass_context
def status(ctx: click.Context, url: str | None) -> None:
    """Show a running server's personas, reload errors, adapters and queue."""
    import httpx

    settings = settings_of(ctx)
    base = url or f"http://{settings.server.host}:{settings.server.port}"
    headers = (
        {"Authorization": f"Bearer {settings.server.api_token}"}
        if settings.server.api_token
        else {}
    )
    try:
        body = httpx.get(f"{base}/status", headers=headers, timeout=5).raise_for_status().json()
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {base}/status: {exc}") from exc
    engine = body["engine"]
    click.echo(f"up {body['uptime_s']:.0f}s")
    click.echo(
        f"engine  {engine['model']}  healthy={engine['healthy']}  "
        f"queue {engine['queue_depth']}/{engine['queue_capacity']}  active {engine['active']}"
    )
    if engine["detail"]:
        click.echo(f"        {engine['detail']}")
    served = body.get("model") or {}
    if served:
        click.echo(f"model   {served['name']}  from {served['source']}")
        if served["error"]:
            click.echo(f"ERR     switch to {served['error_source']} failed: {served['error']}")
    for name, state in body["adapters"].items():
        click.echo(f"adapter {name}: {state}")
    database = body.get("database", {})
    if database:
        mark = "ok" if database["ok"] else "DOWN"
        click.echo(f"database {database['backend']} {mark}: {database['detail']}")
    mine = {p["id"]: p["content_hash"] for p in body["personas"] if p["content_hash"]}
    for other in body.get("instances", []):
        if other.get("self"):
            continue
        differ = sorted(k for k, v in other.get("personas", {}).items() if mine.get(k) != v)
        note = f"personas differ: {', '.join(differ)}" if differ else "same personas"
        click.echo(f"instance {other['id']}: {note}; leases {other.get('leases') or '-'}")
    for p in body["personas"]:
        mark = "ok " if not p["errors"] else "ERR"
        reloaded = _ago(p["last_reload"]) if p["last_reload"] else "-"
        click.echo(
            f"{mark} {p['id']:<16} {p['content_hash'] or '-':<16} reloads={p['reloads']}  "
            f"last reload {reloaded}"
        )
        for e in p["errors"]:
            click.echo(f"      {e['path']}:{e['line']}: {e['key']}: {e['message']}")
    healthy = (
        engine["healthy"]
        and not served.get("error")
        and all(not p["errors"] for p in body["personas"])
    )
    sys.exit(0 if healthy else 1)


def _ago(timestamp: float) -> str:
    seconds = max(0.0, time.time() - timestamp)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


@main.command()
@click.argument("persona", required=False)
@click.option("--json", "as_json", is_flag=True, help="print the reactions as JSON")
@click.option(
    "--to-evals", is_flag=True, help="append PERSONA's thumbs-down questions to evals.yaml"
)
@settings_options
@click.pass_context
def feedback(ctx: click.Context, persona: str | None, as_json: bool, to_evals: bool) -> None:
    """List thumbs-up/down reactions from chat, newest first (of PERSONA, or of all)."""
    settings = settings_of(ctx)
    if to_evals:
        if not persona:
            raise click.UsageError("--to-evals needs the PERSONA whose evals.yaml to extend")
        try:
            click.echo(describe_append(feedback_to_evals(settings, persona)))
        except (CommandError, AppendRefused) as exc:
            raise click.ClickException(str(exc)) from exc
        return
    print_feedback(list_feedback(settings, persona), as_json_output=as_json, echo=click.echo)
