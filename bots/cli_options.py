"""The options that say where `bots` finds its settings: bots.toml, folders, model, engine, -v.

The `bots` group takes them before the subcommand and every command that loads settings takes
them after it as well, so `bots --personas p serve` and `bots serve --personas p` are the same
command. Given in both places, the value after the subcommand wins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from bots.logs import setup_logging
from bots.settings import Settings, SettingsError, load_settings

F = TypeVar("F", bound=Callable[..., Any])

# Option (its Python name) -> the dotted settings key that it overrides.
SETTINGS_KEYS = {
    "personas_dir": "personas_dir",
    "knowledge_dir": "knowledge_dir",
    "data_dir": "data_dir",
    "model_path": "model.path",
    "endpoint": "model.endpoint",
    "engine": "model.engine",
}


@dataclass(frozen=True)
class SettingsFlags:
    """What the command line said so far: the bots.toml to read, settings overrides, -v count."""

    config: Path | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    verbose: int = 0

    def given(self, name: str, value: Any) -> SettingsFlags:
        """These flags with one more option's value, replacing what an earlier one said."""
        if name in SETTINGS_KEYS:
            return dataclasses.replace(
                self, overrides={**self.overrides, SETTINGS_KEYS[name]: value}
            )
        return dataclasses.replace(self, **{name: value})


def flags_of(ctx: click.Context) -> SettingsFlags:
    """The flags given so far: the group's, with those given to this command over them."""
    return ctx.find_object(SettingsFlags) or SettingsFlags()


def _keep(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    # On a subcommand, ctx.obj starts as the group's object: replacing it (not changing it)
    # keeps the group's flags as they were and lets this command's values win here.
    if value is not None and value != 0 and param.name is not None:
        ctx.obj = flags_of(ctx).given(param.name, value)


def _keep_verbosity(ctx: click.Context, param: click.Parameter, value: int) -> None:
    # The group sets up logging for every command; a subcommand again where it is given -v.
    if value or ctx.parent is None:
        _keep(ctx, param, value)
        setup_logging(value)


def settings_options(command: F) -> F:
    """Add the settings options to a click command (the group, or a command that loads settings)."""
    return _add_options(command, skip=())


def settings_options_but_model(command: F) -> F:
    """The settings options less `--model`, for a command whose `--model` means more (`bots
    eval --model A --model B`); the group's `--model` still sets model.path."""
    return _add_options(command, skip=("--model",))


def _add_options(command: F, skip: tuple[str, ...]) -> F:
    path = click.Path(path_type=Path)
    options: list[tuple[tuple[str, ...], dict[str, Any]]] = [
        (("--config",), {"type": path, "help": "bots.toml to read"}),
        (("--personas", "personas_dir"), {"type": path, "help": "persona folders"}),
        (("--knowledge", "knowledge_dir"), {"type": path, "help": "shared libraries"}),
        (("--data-dir",), {"type": path, "help": "conversations and index cache"}),
        (("--model", "model_path"), {"help": "GGUF model file (default: embedded SmolLM2-135M)"}),
        (("--endpoint",), {"help": "OpenAI-compatible endpoint to use instead of a local model"}),
        (("--engine",), {"type": click.Choice(["batched", "simple"]), "help": "local engine"}),
        (
            ("-v", "--verbose"),
            {"count": True, "help": "more logging (-vv for debug)", "callback": _keep_verbosity},
        ),
    ]
    for decls, attrs in reversed(options):  # the last one applied is the first in --help
        if decls[0] in skip:
            continue
        option = click.option(*decls, **{"callback": _keep, "expose_value": False, **attrs})
        command = option(command)
    return command


def settings_of(ctx: click.Context, **more: Any) -> Settings:
    """Settings from bots.toml + environment + the flags given before and after the subcommand
    + the command's own (`more`, dotted keys)."""
    flags = flags_of(ctx)
    try:
        return load_settings(config=flags.config, overrides={**flags.overrides, **more})
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


def settings_reader(ctx: click.Context, **more: Any) -> Callable[[], Settings]:
    """Reads the settings again as `settings_of` did (for a running server to follow saves of
    bots.toml); raises SettingsError."""
    flags = flags_of(ctx)
    overrides = {**flags.overrides, **more}
    return lambda: load_settings(config=flags.config, overrides=overrides)
