"""The curated catalogue of chat GGUFs (`data/catalogue.toml`), read into frozen entries.

The catalogue is data shipped in the package, not code: an entry says where a model comes from
(Hugging Face repository, file, revision), what it is, how big it is and the shape of its KV
cache, from which `fit` works out the RAM it needs.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

CATALOGUE_FILE = "catalogue.toml"


class CatalogueError(ValueError):
    """The catalogue file is malformed; the message names the entry and the key."""


@dataclass(frozen=True)
class CatalogueEntry:
    """One model of the catalogue."""

    name: str
    family: str
    params: str
    quant: str
    size_bytes: int
    licence: str
    repo: str
    file: str
    revision: str
    layers: int
    kv_heads: int
    head_dim: int
    sha256: str = ""
    instruct: bool = True
    embedded: bool = False
    checked: str = ""
    note: str = ""

    @property
    def source(self) -> str:
        """The `hf://owner/repo/file` address `bots model pull` also accepts."""
        return f"hf://{self.repo}/{self.file}"

    def kv_bytes(self, n_ctx: int) -> int:
        """Bytes of an f16 K and V cache holding `n_ctx` tokens."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 2 * n_ctx


_REQUIRED = {
    "name": str,
    "family": str,
    "params": str,
    "quant": str,
    "size_bytes": int,
    "licence": str,
    "repo": str,
    "file": str,
    "revision": str,
    "layers": int,
    "kv_heads": int,
    "head_dim": int,
}
_OPTIONAL = {
    "sha256": str,
    "instruct": bool,
    "embedded": bool,
    "checked": str,
    "note": str,
}


def parse_catalogue(text: str, source: str = CATALOGUE_FILE) -> tuple[CatalogueEntry, ...]:
    """The entries of a catalogue TOML text; CatalogueError names the entry and key at fault."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{source}: {exc}") from exc
    entries: list[CatalogueEntry] = []
    seen: set[str] = set()
    for index, raw in enumerate(data.get("model", [])):
        entry = _entry(raw, f"{source}: model #{index + 1}")
        if entry.name in seen:
            raise CatalogueError(f"{source}: model {entry.name!r} is listed twice")
        seen.add(entry.name)
        entries.append(entry)
    return tuple(entries)


def _entry(raw: dict[str, Any], where: str) -> CatalogueEntry:
    unknown = set(raw) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        raise CatalogueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if key not in raw:
            if key in _REQUIRED:
                raise CatalogueError(f"{where}: missing {key}")
            continue
        value = raw[key]
        # bool is an int in Python: an int field must not take true/false.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CatalogueError(f"{where}: {key} must be a {kind.__name__}, not {value!r}")
    return CatalogueEntry(**raw)


def load_catalogue() -> tuple[CatalogueEntry, ...]:
    """The catalogue shipped in the package."""
    text = files("bots.modelhub").joinpath("data", CATALOGUE_FILE).read_text(encoding="utf-8")
    return parse_catalogue(text)


def find_entry(name: str, catalogue: tuple[CatalogueEntry, ...]) -> CatalogueEntry | None:
    """The entry called `name` (case-insensitive), or None."""
    wanted = name.lower()
    return next((e for e in catalogue if e.name.lower() == wanted), None)
