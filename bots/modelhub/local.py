"""GGUF files already on this machine: the Hugging Face cache, Ollama's store, LM Studio's
folder, bots' own model folder, `model.path` and the embedded default.

Each store is read the way its owner lays it out: the Hugging Face cache through
`huggingface_hub.scan_cache_dir`; Ollama's manifests (JSON naming their layers by digest, the
model layer's blob at `blobs/sha256-<hex>`); LM Studio's `publisher/repository/file.gguf`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
OLLAMA_DEFAULT_HOST = "registry.ollama.ai"


@dataclass(frozen=True)
class LocalModel:
    """One GGUF file found on the machine."""

    name: str
    path: Path
    source: str  # "huggingface", "ollama", "lmstudio", "bots", "model.path", "embedded"
    size_bytes: int


def is_gguf(path: Path) -> bool:
    """Whether the file starts with the GGUF magic bytes."""
    try:
        with path.open("rb") as handle:
            return handle.read(4) == GGUF_MAGIC
    except OSError:
        return False


def hf_cache_dir(environ: Mapping[str, str], home: Path) -> Path:
    """Where huggingface_hub keeps its cache, by the same variables it reads."""
    if environ.get("HF_HUB_CACHE"):
        return Path(environ["HF_HUB_CACHE"]).expanduser()
    if environ.get("HF_HOME"):
        return Path(environ["HF_HOME"]).expanduser() / "hub"
    cache = Path(environ["XDG_CACHE_HOME"]) if environ.get("XDG_CACHE_HOME") else home / ".cache"
    return cache / "huggingface" / "hub"


def ollama_dir(environ: Mapping[str, str], home: Path) -> Path:
    return Path(environ.get("OLLAMA_MODELS") or home / ".ollama" / "models").expanduser()


def lmstudio_dirs(home: Path) -> tuple[Path, ...]:
    """LM Studio's models folder: ~/.lmstudio/models now, ~/.cache/lm-studio/models before 0.3."""
    return (home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models")


def scan_hf_cache(cache_dir: Path) -> Iterator[LocalModel]:
    """GGUF files in a Hugging Face cache, named `owner/repo/file`."""
    if not cache_dir.is_dir():
        return
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir(cache_dir)
    except Exception as exc:  # a damaged cache is reported, not fatal to a listing
        log.warning("%s: cannot read the Hugging Face cache: %s", cache_dir, exc)
        return
    for repo in info.repos:
        for revision in repo.revisions:
            for file in revision.files:
                if file.file_name.endswith(".gguf") and is_gguf(file.file_path):
                    yield LocalModel(
                        f"{repo.repo_id}/{file.file_name}",
                        file.file_path,
                        "huggingface",
                        file.size_on_disk,
                    )


def scan_ollama(store: Path) -> Iterator[LocalModel]:
    """The model blobs Ollama's manifests name, as `model:tag` (with the namespace and host
    where they are not Ollama's own library)."""
    manifests = store / "manifests"
    if not manifests.is_dir():
        return
    for manifest in sorted(p for p in manifests.rglob("*") if p.is_file()):
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            layers = data["layers"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: not an Ollama manifest: %s", manifest, exc)
            continue
        for layer in layers:
            if not isinstance(layer, dict) or layer.get("mediaType") != OLLAMA_MODEL_LAYER:
                continue
            blob = store / "blobs" / str(layer.get("digest", "")).replace(":", "-")
            if is_gguf(blob):
                yield LocalModel(
                    _ollama_name(manifest.relative_to(manifests)),
                    blob,
                    "ollama",
                    blob.stat().st_size,
                )


def _ollama_name(relative: Path) -> str:
    *where, model, tag = relative.parts
    if len(where) == 2 and where[0] == OLLAMA_DEFAULT_HOST and where[1] == "library":
        return f"{model}:{tag}"
    if where and where[0] == OLLAMA_DEFAULT_HOST:
        where = where[1:]
    return "/".join([*where, model]) + f":{tag}"


def scan_folder(root: Path, source: str) -> Iterator[LocalModel]:
    """GGUF files anywhere under `root`, named by their path below it."""
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*.gguf")):
        if path.is_file() and is_gguf(path):
            yield LocalModel(str(path.relative_to(root)), path, source, path.stat().st_size)


def scan_machine(
    *,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
    bots_models: Path | None = None,
    configured: Path | None = None,
    embedded: Path | None = None,
) -> list[LocalModel]:
    """Every GGUF file found in the usual places, each file once (the first place that
    names it wins, so a Hugging Face snapshot is not listed again as its blob)."""
    environ = os.environ if environ is None else environ
    home = Path.home() if home is None else home
    found: list[LocalModel] = []
    if embedded is not None and embedded.is_file():
        found.append(LocalModel(embedded.name, embedded, "embedded", embedded.stat().st_size))
    if configured is not None and configured.is_file() and is_gguf(configured):
        found.append(
            LocalModel(configured.name, configured, "model.path", configured.stat().st_size)
        )
    found.extend(scan_hf_cache(hf_cache_dir(environ, home)))
    found.extend(scan_ollama(ollama_dir(environ, home)))
    for folder in lmstudio_dirs(home):
        found.extend(scan_folder(folder, "lmstudio"))
    if bots_models is not None:
        found.extend(scan_folder(bots_models, "bots"))
    unique: dict[Path, LocalModel] = {}
    for model in found:
        unique.setdefault(model.path.resolve(), model)
    return list(unique.values())
