"""The shared model behind every persona: the Engine protocol and its implementations."""

from bots.engine.base import (
    ChatMessage,
    Engine,
    EngineBusy,
    EngineError,
    EngineTimeout,
    GenerationRequest,
    Piece,
    Usage,
)
from bots.engine.cxx_runtime import preload_libstdcxx

# Before any module of this package loads llama.cpp (see cxx_runtime for the crash it avoids).
preload_libstdcxx()

__all__ = [
    "ChatMessage",
    "Engine",
    "EngineBusy",
    "EngineError",
    "EngineTimeout",
    "GenerationRequest",
    "Piece",
    "Usage",
]
