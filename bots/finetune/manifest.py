"""Where a persona's adapters live, their version numbers, and the manifest beside each one.

`<data_dir>/adapters/PERSONA/<version>/` holds `adapter.gguf` (the local engine's), `peft/` (vLLM's)
and `manifest.json`; every run takes the next number and the earlier versions stay. A version
folder with a checkpoint and no manifest is a run that stopped before its end: `--resume` goes
on with it. The manifest names the base model by its SHA-256, so a server can refuse an adapter
trained on another model. No torch here.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bots.engine.adapter_files import ADAPTERS_DIR
from bots.finetune.recipe import Recipe

MANIFEST_FILE = "manifest.json"
CHECKPOINT_FILE = "checkpoint.pt"


class ResumeRefused(ValueError):
    """The checkpoint was made with another recipe or other data than this run's."""


@dataclass(frozen=True)
class Outcome:
    """What a training run did and measured."""

    steps: int
    resumed_from: int
    train_loss: float
    held_out_loss_before: float
    held_out_loss_after: float
    tokens: int  # all tokens through the model in this session's steps
    trained_tokens: int  # those of them that carried loss
    train_s: float
    tokens_per_s: float
    peak_rss_mb: float
    peak_device_mb: float | None


@dataclass(frozen=True)
class Provenance:
    """What a version was made from: the base model file and the data."""

    persona: str
    base_model: Path
    base_model_sha256: str
    data_folder: Path
    data_hash: str
    train_examples: int
    held_out_examples: int
    device: str
    load_s: float


def persona_adapters(data_dir: Path, persona: str) -> Path:
    """The folder of PERSONA's adapter versions."""
    return data_dir / ADAPTERS_DIR / persona


def versions(folder: Path) -> list[int]:
    """The version numbers in `folder`, lowest first."""
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def new_version(folder: Path) -> Path:
    """Make the folder of the next version (one past every version there, finished or not)."""
    existing = versions(folder)
    path = folder / str(existing[-1] + 1 if existing else 1)
    path.mkdir(parents=True)
    return path


def unfinished_version(folder: Path) -> Path | None:
    """The newest version that has a checkpoint and no manifest (a run that did not end)."""
    for number in reversed(versions(folder)):
        path = folder / str(number)
        if (path / CHECKPOINT_FILE).is_file() and not (path / MANIFEST_FILE).exists():
            return path
    return None


def write_manifest(
    version_dir: Path, provenance: Provenance, recipe: Recipe, outcome: Outcome
) -> dict[str, Any]:
    """Write `manifest.json` in `version_dir` (the last file of a finished version)."""
    manifest = {
        "version": int(version_dir.name),
        "persona": provenance.persona,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "base_model": provenance.base_model.name,
        "base_model_sha256": provenance.base_model_sha256,
        "data_folder": str(provenance.data_folder),
        "data_hash": provenance.data_hash,
        "examples": {
            "train": provenance.train_examples,
            "held_out": provenance.held_out_examples,
        },
        "recipe": recipe.as_dict(),
        "device": provenance.device,
        "metrics": {
            "train_loss": outcome.train_loss,
            "held_out_loss_before": outcome.held_out_loss_before,
            "held_out_loss_after": outcome.held_out_loss_after,
        },
        "timings": {
            "load_s": provenance.load_s,
            "train_s": outcome.train_s,
            "tokens_per_s": outcome.tokens_per_s,
        },
        "peak_memory_mb": {"rss": outcome.peak_rss_mb, "device": outcome.peak_device_mb},
        "run": {k: v for k, v in asdict(outcome).items() if k in _RUN_KEYS},
        "files": {"gguf": "adapter.gguf", "peft": "peft"},
    }
    (version_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


_RUN_KEYS = ("steps", "resumed_from", "tokens", "trained_tokens")
