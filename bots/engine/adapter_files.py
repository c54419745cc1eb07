"""Whether a LoRA GGUF file fits the served base model, read from the two files' headers.

The same checks `llama_adapter_lora_init` makes (a GGUF, `general.type` adapter, `adapter.type`
lora, the base model's architecture, each `lora_a`/`lora_b` pair shaped for the base tensor it
changes), made without llama.cpp so that a persona naming a bad file is refused when it loads,
with the file's name, while the last good persona keeps serving. Headers only: the base model's
tensor data is never read.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

from bots.engine.model_files import ModelNotFound, resolve_model_path
from bots.settings import Settings

GGUF_MAGIC = b"GGUF"
# Value types of GGUF metadata: (struct format, size) for the fixed-size ones.
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
# Bytes per element of the unquantized tensor types an adapter is written in (f32, f16, bf16).
_ELEMENT_BYTES = {0: 4, 1: 2, 30: 2}
MAX_HEADER_ITEMS = 10_000_000  # a count beyond any real file: the header is damaged
DEFAULT_ALIGNMENT = 32
ADAPTERS_DIR = "adapters"  # under the data folder: NAME/VERSION/adapter.gguf (bots train)


class GGUFProblem(Exception):
    """The file is not a readable GGUF; the message says what is wrong."""


@dataclass(frozen=True)
class GGUFHeader:
    """A GGUF file's metadata and tensor shapes (in GGUF order: ne[0] first)."""

    metadata: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]


def read_header(path: Path) -> GGUFHeader:
    """The header of the GGUF file at `path`; GGUFProblem when it is not a whole GGUF file."""
    try:
        with path.open("rb") as handle:
            return _read_header(handle, path.stat().st_size)
    except OSError as exc:
        raise GGUFProblem(f"cannot read: {exc.strerror}") from exc
    except (struct.error, UnicodeDecodeError, EOFError) as exc:
        raise GGUFProblem("the GGUF header is damaged or cut short") from exc


def _read_header(handle: BinaryIO, size: int) -> GGUFHeader:
    if handle.read(4) != GGUF_MAGIC:
        raise GGUFProblem("not a GGUF file")
    _version, n_tensors, n_kv = struct.unpack("<IQQ", _exact(handle, 20))
    if n_tensors > MAX_HEADER_ITEMS or n_kv > MAX_HEADER_ITEMS:
        raise GGUFProblem("the GGUF header is damaged")
    metadata = {_string(handle): _value(handle, _u32(handle)) for _ in range(n_kv)}
    shapes: dict[str, tuple[int, ...]] = {}
    end = 0
    for _ in range(n_tensors):
        name = _string(handle)
        dims = tuple(struct.unpack("<Q", _exact(handle, 8))[0] for _ in range(_u32(handle)))
        kind, offset = struct.unpack("<IQ", _exact(handle, 12))
        shapes[name] = dims
        count = 1
        for dim in dims:
            count *= dim
        end = max(end, offset + count * _ELEMENT_BYTES.get(kind, 0))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT)) or DEFAULT_ALIGNMENT
    data_start = -(-handle.tell() // alignment) * alignment
    if data_start + end > size:
        raise GGUFProblem(f"cut short: {size} bytes, its tensors need {data_start + end}")
    return GGUFHeader(metadata, shapes)


def _exact(handle: BinaryIO, n: int) -> bytes:
    data = handle.read(n)
    if len(data) != n:
        raise EOFError
    return data


def _u32(handle: BinaryIO) -> int:
    return int(struct.unpack("<I", _exact(handle, 4))[0])


def _string(handle: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", _exact(handle, 8))
    if length > MAX_HEADER_ITEMS:
        raise GGUFProblem("the GGUF header is damaged")
    return _exact(handle, length).decode()


def _value(handle: BinaryIO, kind: int) -> Any:
    if kind == _STRING:
        return _string(handle)
    if kind == _ARRAY:
        item_kind = _u32(handle)
        (count,) = struct.unpack("<Q", _exact(handle, 8))
        if count > MAX_HEADER_ITEMS:
            raise GGUFProblem("the GGUF header is damaged")
        if item_kind in _SCALARS:  # skipped, not decoded: the vocabulary is 49k entries
            _exact(handle, count * struct.calcsize(_SCALARS[item_kind]))
            return None
        return [_value(handle, item_kind) for _ in range(count)]
    fmt = _SCALARS.get(kind)
    if fmt is None:
        raise GGUFProblem(f"unknown GGUF value type {kind}")
    return struct.unpack(fmt, _exact(handle, struct.calcsize(fmt)))[0]


def adapter_problem(adapter: Path, base: Path | None) -> str:
    """Why the LoRA GGUF `adapter` cannot serve on the model `base` ("" when it can).

    Without `base` (a remote engine) only the adapter file itself is checked.
    """
    try:
        header = read_header(adapter)
    except GGUFProblem as exc:
        return str(exc)
    meta = header.metadata
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        return "not a LoRA adapter (general.type must be adapter, adapter.type lora)"
    if base is None:
        return ""
    try:
        model = _base_header(base, base.stat().st_mtime_ns)
    except (GGUFProblem, OSError) as exc:
        return f"cannot read the base model {base.name}: {exc}"
    arch = model.metadata.get("general.architecture")
    if meta.get("general.architecture") != arch:
        return f"made for {meta.get('general.architecture')!r}, the model is {arch!r}"
    return _shape_problem(header.shapes, model.shapes)


def _shape_problem(lora: dict[str, tuple[int, ...]], model: dict[str, tuple[int, ...]]) -> str:
    for name, a in lora.items():
        if not name.endswith(".lora_a"):
            continue
        target = name.removesuffix(".lora_a")
        b = lora.get(target + ".lora_b")
        weight = model.get(target)
        if b is None:
            return f"{name} has no {target}.lora_b"
        if weight is None:
            return f"the base model has no tensor {target}: made for another model"
        if len(a) != 2 or len(b) != 2 or a[0] != weight[0] or b[1] != weight[1] or a[1] != b[0]:
            return (
                f"{target}: shapes {a} and {b} do not fit the base model's {weight}: "
                "made for another model"
            )
    if not any(name.endswith(".lora_a") for name in lora):
        return "holds no LoRA tensors"
    return ""


@lru_cache(maxsize=4)
def _base_header(path: Path, _mtime_ns: int) -> GGUFHeader:
    return read_header(path)


@lru_cache(maxsize=4)
def _file_sha256(path: Path, _mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The file's SHA-256 (hex), computed once per file version."""
    return _file_sha256(path, path.stat().st_mtime_ns)


@dataclass(frozen=True)
class AdapterFiles:
    """Adapter versions under `folder`, checked against the base model file `base` (None: a
    remote engine's model, of which only the adapter file itself can be checked)."""

    folder: Path
    base: Path | None = None

    def problem(self, path: Path) -> str:
        return adapter_problem(path, self.base)

    def base_sha256(self) -> str | None:
        try:
            return file_sha256(self.base) if self.base is not None else None
        except OSError:
            return None


def adapter_files(settings: Settings) -> AdapterFiles:
    """The adapters under `<data_dir>/adapters`, for the model the settings serve."""
    base = None
    if not settings.model.endpoint:
        try:
            base = resolve_model_path(settings.model.path or None)
        except (ModelNotFound, OSError):
            base = None  # the engine's start says why; a persona's adapter waits for it
    return AdapterFiles(settings.data_dir / ADAPTERS_DIR, base)
