"""One training run from an export folder to a finished adapter version, for `bots train` and
`bots bench train`: check the extra, read and split the data, load the base, train, write the
manifest. The training libraries are imported only here, after the checks that need none."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bots.finetune.dataset import read_dataset, split_dataset
from bots.finetune.manifest import Provenance, write_manifest
from bots.finetune.recipe import Recipe, StepReport

TRAIN_MODULES = ("torch", "transformers", "peft", "gguf")
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
EXAMPLE_DATA = Path(__file__).parent / "data" / "ahoy"


class TrainUnavailable(RuntimeError):
    """The train extra is missing, or the device asked for is not there."""


@dataclass(frozen=True)
class TrainJob:
    """What to train: whose, from which export folder, on which model file, into which folder."""

    persona: str
    data: Path
    model_path: Path
    version_dir: Path
    recipe: Recipe
    device: str = "cpu"
    resume: bool = False
    threads: int = 0  # CPU threads for torch; 0: torch's default (one per core)


def missing_train_modules() -> list[str]:
    """The modules of the train extra that cannot be imported here."""
    return [name for name in TRAIN_MODULES if importlib.util.find_spec(name) is None]


def require_train_extra() -> None:
    """Raise `TrainUnavailable` with the exact install command when the extra is missing."""
    missing = missing_train_modules()
    if missing:
        raise TrainUnavailable(
            f"bots train needs the train extra (missing: {', '.join(missing)}). Install it with\n"
            f"  pip install 'bots[train]' --extra-index-url {CPU_TORCH_INDEX}\n"
            "(that index has the CPU-only torch; leave it out on a machine with a CUDA GPU)"
        )


def run_training(job: TrainJob, on_step: StepReport | None = None) -> dict[str, Any]:
    """Train `job` and write its version folder; returns the manifest written."""
    require_train_extra()
    dataset = read_dataset(job.data)
    split = split_dataset(dataset, job.recipe.held_out_share, job.recipe.seed)
    import torch

    from bots.finetune.train import device_available, load_base, train_adapter

    if job.threads:
        torch.set_num_threads(job.threads)
    if not device_available(job.device):
        raise TrainUnavailable(f"--device {job.device}: torch sees no such device here")
    base = load_base(job.model_path, job.device)
    outcome = train_adapter(
        base, split, job.recipe, job.version_dir, resume=job.resume, on_step=on_step
    )
    provenance = Provenance(
        persona=job.persona,
        base_model=job.model_path,
        base_model_sha256=base.sha256,
        data_folder=job.data,
        data_hash=dataset.data_hash,
        train_examples=len(split.train),
        held_out_examples=len(split.held_out),
        device=job.device,
        load_s=base.load_s,
    )
    return write_manifest(job.version_dir, provenance, job.recipe, outcome)
