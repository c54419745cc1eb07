"""`adapter:` in persona.md: which LoRA adapter the persona's replies are made with.

    adapter: handbook@3            # version 3 that `bots train handbook` wrote
    adapter: tuned/handbook.gguf   # a GGUF file, relative to the persona folder (or absolute)
    adapter:                       # either of those, with a scale (default 1.0)
      name: handbook@3
      scale: 0.5

`NAME@VERSION` is `<data_dir>/adapters/NAME/VERSION/adapter.gguf`, next to the `manifest.json`
`bots train` writes ("version", "base_model_sha256", ...). A missing, damaged or wrong-base file
is an error on the persona's `adapter:` line naming the file, and the last good snapshot keeps
serving. No `adapter:` (or `adapter: none`) is the base model, exactly as before.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

ADAPTER_FILE = "adapter.gguf"
MANIFEST_FILE = "manifest.json"
VERSION_REF = re.compile(r"^(?P<name>[a-z0-9][a-z0-9_-]{0,63})@(?P<version>[A-Za-z0-9._-]{1,64})$")
NO_ADAPTER = ("", "none")
MIN_SCALE, MAX_SCALE = 0.0, 4.0


@dataclass(frozen=True)
class PersonaAdapter:
    """The adapter a persona snapshot serves with, as checked when it loaded."""

    name: str  # "handbook@3", or the file name of a path
    path: Path
    scale: float = 1.0
    # manifest.json as (key, compact JSON of the value) pairs; () for a bare file.
    manifest: tuple[tuple[str, str], ...] = ()


class AdapterCheck(Protocol):
    """Where adapter versions live and whether a file fits the served model (see
    `bots.engine.adapter_files.AdapterFiles`)."""

    @property
    def folder(self) -> Path:
        """The folder of `NAME/VERSION/adapter.gguf`."""
        ...

    def problem(self, path: Path) -> str:
        """Why the GGUF at `path` cannot serve on the model ("" when it can)."""
        ...

    def base_sha256(self) -> str | None:
        """The served base model file's SHA-256, or None when not known (a remote engine)."""
        ...


class AdapterProblem(Exception):
    """The `adapter:` value cannot be served; the message names the file and why."""


def parse_adapter(value: Any, folder: Path, check: AdapterCheck | None) -> PersonaAdapter | None:
    """The adapter `value` (the front matter's `adapter:`) names; AdapterProblem when it cannot
    serve. Without `check` (no model to check against) nothing can be served with an adapter."""
    ref, scale = _ref_and_scale(value)
    if ref.strip().lower() in NO_ADAPTER:
        return None
    if check is None:
        raise AdapterProblem("adapters need the model; none is loaded here")
    match = VERSION_REF.match(ref)
    if match:
        path = check.folder / match["name"] / match["version"] / ADAPTER_FILE
    elif ref.endswith(".gguf"):
        path = Path(ref).expanduser()
        path = path if path.is_absolute() else folder / path
    else:
        raise AdapterProblem(f"{ref!r}: must be NAME@VERSION (bots train's) or a .gguf file")
    if not path.is_file():
        raise AdapterProblem(f"{path}: no such file")
    manifest = _manifest(path.parent / MANIFEST_FILE, check.base_sha256()) if match else ()
    problem = check.problem(path)
    if problem:
        raise AdapterProblem(f"{path}: {problem}")
    return PersonaAdapter(ref if match else path.name, path.resolve(), scale, manifest)


def _ref_and_scale(value: Any) -> tuple[str, float]:
    if isinstance(value, str):
        return value, 1.0
    if not isinstance(value, dict):
        raise AdapterProblem("must be NAME@VERSION, a .gguf path, or a mapping of name and scale")
    unknown = set(value) - {"name", "scale"}
    if unknown:
        raise AdapterProblem(f"unknown key {sorted(unknown)[0]!r} (known: name, scale)")
    name, scale = value.get("name"), value.get("scale", 1.0)
    if not isinstance(name, str):
        raise AdapterProblem("name: must be NAME@VERSION or a .gguf path")
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        raise AdapterProblem(f"scale: must be a number, got {scale!r}")
    if not MIN_SCALE < scale <= MAX_SCALE:
        raise AdapterProblem(f"scale: must be above {MIN_SCALE:g} and at most {MAX_SCALE:g}")
    return name, float(scale)


def _manifest(path: Path, base_sha256: str | None) -> tuple[tuple[str, str], ...]:
    """The version's manifest, checked against the served base model."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterProblem(f"{path}: no such file (bots train writes it)") from None
    except (OSError, ValueError) as exc:
        raise AdapterProblem(f"{path}: not readable JSON: {exc}") from exc
    if not isinstance(data, dict) or "base_model_sha256" not in data:
        raise AdapterProblem(f"{path}: has no base_model_sha256")
    trained_on = data["base_model_sha256"]
    if base_sha256 is not None and trained_on != base_sha256:
        raise AdapterProblem(
            f"{path}: trained on the base model {str(trained_on)[:12]}..., "
            f"the served model is {base_sha256[:12]}...: a wrong-base adapter"
        )
    return tuple(
        (str(k), v if isinstance(v, str) else json.dumps(v, sort_keys=True))
        for k, v in data.items()
    )
