"""A random LoRA adapter GGUF shaped for a llama-architecture base model, for measuring what an
adapter costs (`bots bench adapters`) and for tests; needs the `gguf` package (a dev dependency).

The layout is what llama.cpp's `llama_adapter_lora_init` reads (llama-adapter.cpp):
`general.type` adapter, `adapter.type` lora, `adapter.lora.alpha`, the base model's
`general.architecture`, and for each changed weight `blk.N.<name>.weight.lora_a` with GGUF shape
ne = [n_in, r] and `.lora_b` with ne = [r, n_out] (numpy shapes are the reverse). The shapes come
from the base model's own header. Random values: the replies change, they do not improve.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bots.engine.adapter_files import read_header

# PEFT's usual targets, as llama.cpp names them: the four attention and three MLP projections.
ALL_PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def write_random_lora(
    path: Path,
    base: Path,
    *,
    rank: int = 8,
    targets: Sequence[str] = ALL_PROJECTIONS,
    strength: float = 0.05,
    seed: int = 1,
    widen: int = 1,
) -> Path:
    """Write a rank-`rank` adapter on `targets` of every layer of `base` to `path`.

    `widen` > 1 multiplies the input width: an adapter for another, wider model, which llama.cpp
    refuses on `base`.
    """
    import gguf  # a dev dependency, imported only where an adapter is made

    header = read_header(base)
    arch = str(header.metadata.get("general.architecture", "llama"))
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    for name, shape in header.shapes.items():
        if not (name.startswith("blk.") and name.endswith(".weight")):
            continue
        if name.split(".")[2] not in targets or len(shape) != 2:
            continue
        n_in, n_out = shape
        a = rng.normal(0, strength, (rank, n_in * widen)).astype(np.float32)
        b = rng.normal(0, strength, (n_out, rank)).astype(np.float32)
        writer.add_tensor(f"{name}.lora_a", a)
        writer.add_tensor(f"{name}.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
