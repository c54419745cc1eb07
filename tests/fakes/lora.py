"""LoRA adapter GGUFs for the embedded SmolLM2-135M: a random one on the q and v projections
(`bots.bench.lora_file`, strong enough that greedy replies change), one shaped for a wider model
(`wrong_base=True`, which llama.cpp and the persona loader refuse), and a version folder as
`bots train` leaves it.
"""

from __future__ import annotations

import json
from pathlib import Path

from bots.bench.lora_file import write_random_lora
from bots.engine.model_files import default_model_path

RANK = 8


def write_lora(
    path: Path, *, seed: int = 1, strength: float = 0.05, wrong_base: bool = False
) -> Path:
    """Write an adapter on the q and v projections of every layer to `path`; returns `path`."""
    return write_random_lora(
        path,
        default_model_path(),
        rank=RANK,
        targets=("attn_q", "attn_v"),
        strength=strength,
        seed=seed,
        widen=2 if wrong_base else 1,
    )


def write_version(
    adapters_dir: Path, persona: str, version: int, *, base_sha256: str, seed: int = 1
) -> Path:
    """A version as `bots train` leaves it: `<persona>/<version>/adapter.gguf` + manifest.json."""
    folder = adapters_dir / persona / str(version)
    write_lora(folder / "adapter.gguf", seed=seed)
    manifest = {"version": version, "base_model_sha256": base_sha256, "recipe": {"rank": RANK}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder / "adapter.gguf"
