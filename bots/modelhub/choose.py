"""Which `[model]` settings serve a model named on the command line: a GGUF path, a catalogue
name or `hf://` address already downloaded, or the configured endpoint's model name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bots.engine.model_files import ModelNotFound, default_model_path
from bots.modelhub.address import AddressError, HubFile, parse_address
from bots.modelhub.catalogue import CatalogueEntry, find_entry, load_catalogue
from bots.modelhub.local import is_gguf
from bots.modelhub.pull import HubAccess
from bots.settings import ModelSettings


class ChooseError(ValueError):
    """The name picks no model this machine can serve; the message says what to do."""


def cached_path(entry: CatalogueEntry | HubFile, cache_dir: Path) -> Path | None:
    """The file of a catalogue entry or Hub address in the Hugging Face cache, if there."""
    if isinstance(entry, CatalogueEntry) and entry.embedded:
        try:
            return default_model_path()
        except ModelNotFound:
            pass
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        entry.repo, entry.file, cache_dir=cache_dir, revision=entry.revision
    )
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def model_keys(name: str, model: ModelSettings, access: HubAccess) -> dict[str, str]:
    """The [model] keys that make `name` the model served."""
    path = Path(name).expanduser()
    if path.is_file():
        if not is_gguf(path):
            raise ChooseError(f"{path}: not a GGUF file (no GGUF header)")
        return {"path": str(path.resolve())}
    catalogue = load_catalogue()
    entry = find_entry(name, catalogue)
    if entry is not None and entry.embedded:
        return {"path": ""}
    if entry is not None or name.startswith("hf://"):
        try:
            address = parse_address(name, catalogue, access.endpoint)
        except AddressError as exc:
            raise ChooseError(str(exc)) from exc
        assert isinstance(address, HubFile)
        found = cached_path(address, access.cache_dir)
        if found is None:
            raise ChooseError(f"{name} is not downloaded yet: bots model pull {name}")
        return {"path": str(found)}
    if model.endpoint:
        return {"endpoint_model": name}
    raise ChooseError(
        f"{name!r}: no such file, not in the catalogue (bots model list) and no model.endpoint "
        "is set whose model it could name"
    )


def with_model_keys(model: ModelSettings, keys: dict[str, str]) -> ModelSettings:
    """`model` serving what `model_keys` chose."""
    return dataclasses.replace(
        model,
        path=keys.get("path", model.path),
        endpoint_model=keys.get("endpoint_model", model.endpoint_model),
    )
