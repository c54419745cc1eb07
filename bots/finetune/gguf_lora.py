"""A PEFT LoRA as a GGUF adapter llama.cpp loads (`llama_adapter_lora_init`).

What llama.cpp's `convert_lora_to_gguf.py` writes, without shipping that script (it is only in
the llama-cpp-python sdist, not the wheel, and it wants a Hugging Face config folder):
`general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and for each adapted
projection `blk.N.<name>.weight.lora_a` (r x in) and `.lora_b` (out x r) in f16. llama.cpp
stores the Q and K projections of a Llama model with their rows permuted for its rotary
layout (the GGUF converter does it; transformers undoes it when it loads a GGUF), so the
adapter's Q and K `lora_b` rows get the same permutation. numpy and gguf only: no torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt

# Hugging Face Llama projection -> llama.cpp tensor name.
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_PEFT_KEY = re.compile(
    r"(?:.*\.)?layers\.(?P<layer>\d+)\.(?P<module>\w+\.\w+)\.lora_(?P<part>[AB])\.weight$"
)

Array = npt.NDArray[np.float32]


class ConversionError(ValueError):
    """A LoRA tensor this writer cannot place in a llama.cpp adapter."""


@dataclass(frozen=True)
class Heads:
    """The attention heads of the base model (the rotary permutation depends on them)."""

    n_head: int
    n_head_kv: int


def write_gguf_adapter(
    path: Path, tensors: Mapping[str, Array], *, alpha: float, heads: Heads
) -> int:
    """Write the PEFT state dict `tensors` (numpy) as an f16 GGUF adapter; returns its count."""
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    count = 0
    for key in sorted(tensors, key=_order):
        name, part = gguf_tensor_name(key)
        array = np.asarray(tensors[key], dtype=np.float32)
        if part == "lora_b" and name.endswith(("attn_q", "attn_k")):
            n_head = heads.n_head if name.endswith("attn_q") else heads.n_head_kv
            array = rotary_permute(array, n_head)
        writer.add_tensor(f"{name}.weight.{part}", array.astype(np.float16))
        count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return count


def gguf_tensor_name(peft_key: str) -> tuple[str, str]:
    """`...layers.3.self_attn.q_proj.lora_A.weight` -> (`blk.3.attn_q`, `lora_a`)."""
    match = _PEFT_KEY.match(peft_key)
    if match is None or match["module"] not in GGUF_NAMES:
        raise ConversionError(f"{peft_key}: not a LoRA on a Llama projection")
    return f"blk.{match['layer']}.{GGUF_NAMES[match['module']]}", f"lora_{match['part'].lower()}"


def rotary_permute(rows: Array, n_head: int) -> Array:
    """The row order llama.cpp's converter gives a Llama Q/K weight (`LlamaModel.permute`)."""
    out = rows.shape[0]
    return (
        rows.reshape(n_head, 2, out // n_head // 2, *rows.shape[1:])
        .swapaxes(1, 2)
        .reshape(rows.shape)
    )


def _order(key: str) -> tuple[int, str]:
    match = _PEFT_KEY.match(key)
    return (int(match["layer"]) if match else -1, key)
