"""`bots db`: the PostgreSQL store's schema and the move from SQLite to it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from bots.cli_options import settings_of, settings_options
from bots.settings import Settings


@click.group(invoke_without_command=True)
@click.pass_context
def db(ctx: click.Context) -> None:
    """The conversation store on PostgreSQL (database_url): migrate, copy from SQLite."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _url(settings: Settings) -> str:
    if not settings.database_url:
        raise click.ClickException(
            "database_url is not set (BOTS_DATABASE_URL or database_url in bots.toml): "
            "the SQLite store needs no migration"
        )
    return settings.database_url


@db.command("migrate")
@settings_options
@click.pass_context
def db_migrate(ctx: click.Context) -> None:
    """Bring the PostgreSQL schema up to date (each instance also does this at start)."""
    import psycopg

    from bots.store.migrations import SchemaTooNew, migrate
    from bots.store.postgres import describe

    url = _url(settings_of(ctx))

    async def run() -> int:
        async with await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=10
        ) as conn:
            return await migrate(conn)

    try:
        ran = asyncio.run(run())
    except (psycopg.Error, SchemaTooNew) as exc:
        raise click.ClickException(f"migrating {describe(url)} failed: {exc}") from exc
    click.echo(f"{describe(url)}: {ran} migrations applied, schema up to date")


@db.command("copy")
@click.option(
    "--from",
    "source",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="the SQLite file (default: <data_dir>/conversations.sqlite3)",
)
@settings_options
@click.pass_context
def db_copy(ctx: click.Context, source: Path | None) -> None:
    """Copy the SQLite conversation store into the (empty) PostgreSQL database."""
    import psycopg

    from bots.store.copy import CopyRefused, copy_sqlite
    from bots.store.postgres import describe

    settings = settings_of(ctx)
    url = _url(settings)
    path = source or settings.db_path
    try:
        counts = asyncio.run(copy_sqlite(path, url))
    except (CopyRefused, psycopg.Error) as exc:
        raise click.ClickException(str(exc)) from exc
    rows = ", ".join(f"{table} {n}" for table, n in counts.items())
    click.echo(f"copied {path} into {describe(url)}: {rows}")
