"""LoRA adapters on the batched engine's shared model: each loaded once, one set per decode.

`llama_adapter_lora_init` loads an adapter against the model (milliseconds; llama.cpp frees it
with the model); `llama_set_adapters_lora` sets the whole adapter set of the context, which
applies to every token of the next `llama_decode`. The scheduler therefore decodes sequences of
one adapter set at a time, and calls `use` before each decode (a no-op when the set is the same).
"""

from __future__ import annotations

import ctypes

import llama_cpp

from bots.engine.base import Adapter
from bots.engine.llama_native import NativeContext, NativeError, NativeModel


class LoraAdapters:
    """The adapters loaded on one model and the one its context applies; engine thread only."""

    def __init__(self, model: NativeModel, ctx: NativeContext) -> None:
        self._model = model
        self._ctx = ctx
        self._loaded: dict[str, llama_cpp.llama_adapter_lora_p] = {}  # by path
        self._current: Adapter | None = None

    @property
    def loaded(self) -> int:
        return len(self._loaded)

    def load(self, adapter: Adapter) -> None:
        """Load `adapter`'s file on the model unless it is loaded already; NativeError when
        llama.cpp refuses it (not a LoRA GGUF, or shapes of another base model)."""
        if adapter.path in self._loaded:
            return
        pointer = llama_cpp.llama_adapter_lora_init(self._model.ptr, adapter.path.encode())
        if not pointer:
            raise NativeError(f"llama.cpp could not load the adapter {adapter.path}")
        self._loaded[adapter.path] = pointer

    def use(self, adapter: Adapter | None) -> None:
        """Make the context apply `adapter` (None: the base model, bit for bit) from now on."""
        if adapter == self._current:
            return
        if adapter is None:
            rc = llama_cpp.llama_set_adapters_lora(self._ctx.ptr, None, 0, None)
        else:
            self.load(adapter)
            pointer = ctypes.cast(self._loaded[adapter.path], llama_cpp.llama_adapter_lora_p_ctypes)
            pointers = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(pointer)
            scales = (ctypes.c_float * 1)(adapter.scale)
            rc = llama_cpp.llama_set_adapters_lora(self._ctx.ptr, pointers, 1, scales)
        if rc != 0:
            raise NativeError(f"llama_set_adapters_lora returned {rc}")
        self._current = adapter
