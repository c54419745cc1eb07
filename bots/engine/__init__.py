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
