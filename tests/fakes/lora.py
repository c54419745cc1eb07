"""A small LoRA adapter GGUF for the embedded SmolLM2-135M, written with `gguf` and numpy.

What llama.cpp's `llama_adapter_lora_init` reads (llama-adapter.cpp): `general.type` adapter,
`adapter.type` lora, `adapter.lora.alpha`, the base model's `general.architecture`, and per
changed weight `blk.N.<name>.weight.lora_a` with ne = [n_in, r] and `.lora_b` with ne = [r,
n_out] (numpy shapes are the reverse: (r, n_in) and (n_out, r)). Random values, large enough
that greedy replies change. `wrong_base=True` writes shapes of a wider model, which llama.cpp
(and the persona loader) refuse.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np

N_LAYERS = 30  # SmolLM2-135M
N_EMBD = 576
N_KV = 192  # 3 key/value heads of 64
RANK = 8


def write_lora(
    path: Path, *, seed: int = 1, strength: float = 0.05, wrong_base: bool = False
) -> Path:
    """Write an adapter on the q and v projections of every layer to `path`; returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width = N_EMBD * 2 if wrong_base else N_EMBD
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(RANK))
    for layer in range(N_LAYERS):
        for name, n_out in (("attn_q", N_EMBD), ("attn_v", N_KV)):
            a = rng.normal(0, strength, (RANK, width)).astype(np.float32)
            b = rng.normal(0, strength, (n_out, RANK)).astype(np.float32)
            writer.add_tensor(f"blk.{layer}.{name}.weight.lora_a", a)
            writer.add_tensor(f"blk.{layer}.{name}.weight.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_version(
    adapters_dir: Path, persona: str, version: int, *, base_sha256: str, seed: int = 1
) -> Path:
    """A version as `bots train` leaves it: `<persona>/<version>/adapter.gguf` + manifest.json."""
    folder = adapters_dir / persona / str(version)
    write_lora(folder / "adapter.gguf", seed=seed)
    manifest = {"version": version, "base_model_sha256": base_sha256, "recipe": {"rank": RANK}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder / "adapter.gguf"
