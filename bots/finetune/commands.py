"""`bots export PERSONA`: the command line over `bots.finetune.export` (which does the work)."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import click

from bots.cli_options import settings_of, settings_options
from bots.finetune.export import ExportOptions, export_persona, summary
from bots.settings import Settings

EXPORTS_FOLDER = "exports"


async def run_export(
    settings: Settings, persona_id: str, options: ExportOptions
) -> tuple[list[str], bool]:
    """Export one persona with the store and documents the settings name: the summary lines,
    and whether there are enough examples to train on.

    Raises click.ClickException for an unknown persona. The model is not loaded: the prompts
    are rebuilt from what the store recorded, with the project's prompt builder.
    """
    from bots.runtime import Runtime

    app = Runtime.create(settings)
    await app.start(watch=False, load_model=False)
    try:
        persona = app.registry.get(persona_id)
        if persona is None:
            known = ", ".join(p.id for p in app.registry.personas()) or "none"
            raise click.ClickException(
                f"no persona {persona_id!r} in {settings.personas_dir} (personas: {known})"
            )
        result = await export_persona(
            app.store, persona, lambda path: app.knowledge.access(persona.id, path), options
        )
        return summary(result, persona), result.enough
    finally:
        await app.close()


@click.command("export")
@click.argument("persona")
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    help="only conversations of this platform (discord, slack, http, web, terminal); repeatable",
)
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="only replies from this day on (UTC), YYYY-MM-DD",
)
@click.option(
    "--with-sources/--without-sources",
    default=True,
    show_default=True,
    help="quote the retrieved documents in each prompt, as the model was given them",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="folder to write into (default: <data_dir>/exports/PERSONA)",
)
@click.option("--real-ids", is_flag=True, help="keep user ids instead of stable pseudonyms")
@settings_options
@click.pass_context
def export(
    ctx: click.Context,
    persona: str,
    platforms: tuple[str, ...],
    since: datetime.datetime | None,
    with_sources: bool,
    out: Path | None,
    real_ids: bool,
) -> None:
    """Write PERSONA's conversations and feedback as fine-tuning data (chat, DPO and KTO JSONL).

    Exits 1 when there are too few examples to train on (the files are written all the same)."""
    settings = settings_of(ctx)
    options = ExportOptions(
        out=out or settings.data_dir / EXPORTS_FOLDER / persona,
        platforms=platforms,
        since=since.date() if since else None,
        with_sources=with_sources,
        real_ids=real_ids,
    )
    lines, enough = asyncio.run(run_export(settings, persona, options))
    for line in lines:
        click.echo(line)
    if not enough:
        ctx.exit(1)
