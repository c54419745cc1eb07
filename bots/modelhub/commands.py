"""`bots model list | pull | use`: pick a model from the catalogue, fetch it, switch to it."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from bots.cli_options import flags_of, settings_of, settings_options
from bots.engine.model_files import ModelNotFound, default_model_path
from bots.modelhub.address import AddressError, parse_address
from bots.modelhub.catalogue import CatalogueEntry, load_catalogue
from bots.modelhub.choose import ChooseError, cached_path, model_keys
from bots.modelhub.fit import Machine, estimate, human_bytes, this_machine
from bots.modelhub.local import LocalModel, hf_cache_dir, scan_machine
from bots.modelhub.pull import DEFAULT_ENDPOINT, HubAccess, PullError, pull
from bots.modelhub.settings_file import SettingsFileError, set_model_keys
from bots.settings import SETTINGS_FILE, Settings


@click.group("model")
def model() -> None:
    """The catalogue of models, downloads, and which model serves."""


def hub_access(settings: Settings, environ: Mapping[str, str] | None = None) -> HubAccess:
    """Download settings from the environment huggingface_hub reads (HF_ENDPOINT, HF_TOKEN,
    HF_HUB_CACHE / HF_HOME); plain URLs go to bots' own model folder."""
    env = os.environ if environ is None else environ
    token = env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or None
    return HubAccess(
        cache_dir=hf_cache_dir(env, Path.home()),
        download_dir=bots_models_dir(settings),
        endpoint=(env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
        token=token,
    )


def bots_models_dir(settings: Settings) -> Path:
    """Where bots keeps model files of its own (Q8_0 copies, plain-URL downloads)."""
    configured = settings.model.cache_dir
    return Path(configured).expanduser() if configured else settings.data_dir / "models"


@model.command("list")
@click.option(
    "--local",
    "local",
    is_flag=True,
    help="also list GGUF files already on this machine (HF cache, Ollama, LM Studio)",
)
@click.option("--json", "as_json", is_flag=True, help="print the list as JSON")
@settings_options
@click.pass_context
def list_models(ctx: click.Context, local: bool, as_json: bool) -> None:
    """The catalogue, marked with what fits this machine and what is already here."""
    settings = settings_of(ctx)
    access = hub_access(settings)
    machine = this_machine(access.cache_dir)
    rows = [_row(e, settings, machine, access.cache_dir) for e in load_catalogue()]
    found = _local(settings, access) if local else []
    if as_json:
        click.echo(
            json.dumps(
                {
                    "machine": {
                        "free_ram_bytes": machine.free_ram_bytes,
                        "free_disk_bytes": machine.free_disk_bytes,
                        "n_ctx": settings.model.n_ctx,
                    },
                    "catalogue": rows,
                    "local": [_local_dict(m) for m in found] if local else None,
                },
                indent=2,
            )
        )
        return
    click.echo(
        f"this machine: {human_bytes(machine.free_ram_bytes)} RAM free, "
        f"{human_bytes(machine.free_disk_bytes)} disk free at {access.cache_dir}; "
        f"RAM shown at model.n_ctx = {settings.model.n_ctx}"
    )
    click.echo(
        f"{'NAME':<14} {'PARAMS':>6} {'QUANT':<7} {'SIZE':>7} {'RAM':>7}  "
        f"{'FITS':<4} {'HERE':<4} {'LICENCE':<28} SOURCE"
    )
    for row in rows:
        click.echo(
            f"{row['name']:<14} {row['params']:>6} {row['quant']:<7} "
            f"{human_bytes(row['size_bytes']):>7} {human_bytes(row['ram_bytes']):>7}  "
            f"{_fits_mark(row):<4} {'yes' if row['here'] else '-':<4} "
            f"{row['licence'][:28]:<28} {row['source']}"
        )
    click.echo(
        "FITS: yes; ram / disk: short of that; * the CPU serves a Q8_0 copy "
        "(model.quantize_q8), counted in RAM"
    )
    if local:
        click.echo("")
        click.echo(f"on this machine ({len(found)} GGUF file(s)):")
        for item in found:
            click.echo(f"  {item.source:<11} {human_bytes(item.size_bytes):>7}  {item.name}")
            click.echo(f"  {'':<11} {'':>7}  {item.path}")


def _row(
    entry: CatalogueEntry, settings: Settings, machine: Machine, cache: Path
) -> dict[str, Any]:
    here = cached_path(entry, cache)
    fit = estimate(entry, settings.model, machine, here=here is not None)
    return {
        "name": entry.name, "family": entry.family, "params": entry.params, "quant": entry.quant,
        "size_bytes": entry.size_bytes, "ram_bytes": fit.ram_bytes, "disk_bytes": fit.disk_bytes,
        "fits_ram": fit.ram_ok, "fits_disk": fit.disk_ok, "q8_copy": fit.q8_copy,
        "here": here is not None, "path": str(here) if here else None,
        "licence": entry.licence, "source": entry.source, "revision": entry.revision,
        "instruct": entry.instruct, "note": entry.note,
    }  # fmt: skip


def _fits_mark(row: dict[str, Any]) -> str:
    if not row["fits_ram"]:
        return "ram"
    if not row["fits_disk"]:
        return "disk"
    return "yes*" if row["q8_copy"] else "yes"


def _local(settings: Settings, access: HubAccess) -> list[LocalModel]:
    configured = Path(settings.model.path).expanduser() if settings.model.path else None
    try:
        embedded: Path | None = default_model_path()
    except ModelNotFound:
        embedded = None
    return scan_machine(
        bots_models=bots_models_dir(settings), configured=configured, embedded=embedded
    )


def _local_dict(item: LocalModel) -> dict[str, Any]:
    return {
        "name": item.name,
        "path": str(item.path),
        "source": item.source,
        "size_bytes": item.size_bytes,
    }


@model.command("pull")
@click.argument("name")
@click.option("--sha256", default="", help="expected SHA-256 (for a plain URL)")
@settings_options
@click.pass_context
def pull_model(ctx: click.Context, name: str, sha256: str) -> None:
    """Download NAME (a catalogue name, hf://owner/repo/file.gguf or a URL) and verify it."""
    settings = settings_of(ctx)
    access = hub_access(settings)
    try:
        address = parse_address(name, load_catalogue(), access.endpoint, sha256)
        click.echo(f"pulling {address.label} ...", err=True)
        pulled = pull(address, access)
    except (AddressError, PullError) as exc:
        raise click.ClickException(str(exc)) from exc
    if pulled.downloaded_bytes:
        rate = pulled.downloaded_bytes / pulled.download_s / 1e6 if pulled.download_s else 0.0
        resumed = (
            f", resumed after {human_bytes(pulled.resumed_from)}" if pulled.resumed_from else ""
        )
        click.echo(
            f"downloaded {human_bytes(pulled.downloaded_bytes)} in "
            f"{pulled.download_s:.1f}s ({rate:.0f} MB/s{resumed})"
        )
    else:
        click.echo("already here")
    click.echo(
        f"verified against {pulled.verified} in {pulled.verify_s:.1f}s: sha256 {pulled.sha256}"
    )
    click.echo(str(pulled.path))
    click.echo(f"use it: bots model use {name}")


@model.command("use")
@click.argument("name")
@settings_options
@click.pass_context
def use_model(ctx: click.Context, name: str) -> None:
    """Serve NAME (a catalogue name, hf:// address, GGUF path, or the endpoint's model name):
    writes bots.toml; a running `bots serve` switches to it live."""
    settings = settings_of(ctx)
    target = flags_of(ctx).config or settings.root / SETTINGS_FILE
    try:
        values = model_keys(name, settings.model, hub_access(settings))
    except ChooseError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        set_model_keys(target, values)
    except (SettingsFileError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    for key, value in values.items():
        click.echo(f"model.{key} = {value!r} written to {target}")
    click.echo("a running `bots serve` switches to it now; `bots status` shows which model serves")
