"""A Q8_0 copy of the model, made once and cached: faster prompts on CPUs for small models.

The default SmolLM2-135M ships as Q4_1, which has no fast matrix-multiplication path on x86
CPUs; the same weights re-quantized to Q8_0 evaluate prompts about twice as fast (see `bots
bench`) with unchanged perplexity, for 137 MB instead of 98 MB. The copy lives in a cache folder
and is keyed by the source file's path, size and modification time, so a changed model is
converted again.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
from pathlib import Path

import llama_cpp

from bots.engine.llama_log import route_llama_logs

log = logging.getLogger(__name__)

Q8_0_SUFFIX = ".q8_0.gguf"
# Re-quantizing an already quantized file loses little going up to 8 bits; llama.cpp refuses it
# unless asked explicitly.
ALLOW_REQUANTIZE = True


FILE_TYPE_KEY = b"general.file_type"
FILE_TYPE_MAX_BYTES = 32
WIDE_FILE_TYPES = (
    llama_cpp.LLAMA_FTYPE_ALL_F32,
    llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
    llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
    llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
)


class QuantizeError(RuntimeError):
    """llama.cpp could not write the converted model."""


def _cache_key(src: Path) -> str:
    stat = src.stat()
    ident = f"{src.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def is_q8_0(path: Path) -> bool:
    """Whether the GGUF file is already mostly Q8_0 (or wider), so converting gains nothing."""
    route_llama_logs()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True  # metadata only: the tensors stay on disk
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise QuantizeError(f"{path}: llama.cpp cannot read this model file")
    try:
        buf = ctypes.create_string_buffer(FILE_TYPE_MAX_BYTES)
        n = llama_cpp.llama_model_meta_val_str(model, FILE_TYPE_KEY, buf, FILE_TYPE_MAX_BYTES)
    finally:
        llama_cpp.llama_model_free(model)
    if n < 0 or not buf.value.isdigit():
        return False
    return int(buf.value) in WIDE_FILE_TYPES


def prepared_model_path(src: Path, cache_dir: Path, *, n_threads: int | None = None) -> Path:
    """`src` re-quantized to Q8_0 in `cache_dir` (made on first use, then reused).

    Returns `src` itself when it is already Q8_0 or wider. Writes to a temporary name first, so
    an interrupted conversion never leaves a half-written model behind.
    """
    if is_q8_0(src):
        return src
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_dir / f"{src.stem}-{_cache_key(src)}{Q8_0_SUFFIX}"
    if out.is_file():
        return out
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    # A warning, so that it shows at the default level: the first start pauses for a few
    # seconds here, and llama.cpp's per-tensor lines (DEBUG now) no longer say why.
    log.warning("preparing a Q8_0 copy of %s for the CPU (once)...", src.name)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.allow_requantize = ALLOW_REQUANTIZE
    params.nthread = n_threads or os.cpu_count() or 1
    try:
        rc = llama_cpp.llama_model_quantize(
            str(src).encode(), str(tmp).encode(), ctypes.byref(params)
        )
        if rc != 0 or not tmp.is_file():
            raise QuantizeError(f"{src}: re-quantizing to Q8_0 failed (llama.cpp returned {rc})")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
