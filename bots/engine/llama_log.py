"""llama.cpp's own log, as records of Python's logging instead of lines on the terminal.

llama.cpp reports every model load (about 80 lines: metadata, tokenizer, buffer sizes) and every
tensor of a re-quantization (about 300) through one callback, and llama-cpp-python's default
callback prints them to stderr. `route_llama_logs` puts ours in its place: each line becomes one
record of the "llama.cpp" logger, at DEBUG (`bots -vv` shows them), except llama.cpp's warnings
and errors, which stay WARNING and ERROR records. The warnings the engine answers itself (a full
KV cache, which it evicts to make room for) are DEBUG too.

llama.cpp sends a line in fragments (a tensor's name, then "converting to q8_0 ..", then its
size and the newline; GGML_LOG_LEVEL_CONT for progress dots), so fragments are joined per thread
until the newline.
"""

from __future__ import annotations

import ctypes
import logging
import threading

import llama_cpp

log = logging.getLogger("llama.cpp")

# enum ggml_log_level in ggml.h (llama-cpp-python's _logger.py still has an older numbering).
GGML_LOG_LEVEL_DEBUG = 1
GGML_LOG_LEVEL_INFO = 2
GGML_LOG_LEVEL_WARN = 3
GGML_LOG_LEVEL_ERROR = 4
GGML_LOG_LEVEL_CONT = 5  # the continuation of the previous message, at its level
LOGGING_LEVELS = {GGML_LOG_LEVEL_WARN: logging.WARNING, GGML_LOG_LEVEL_ERROR: logging.ERROR}
# Warnings about conditions the engine handles, logged at DEBUG like the rest.
EXPECTED_LOG_LINES = (
    b"failed to find a memory slot",  # a full KV cache: the engine evicts and retries
    b"failed to prepare ubatch",
    # The KV cache is shared by all conversations; each one is held to the trained context.
    b"n_ctx_train",
)


class _Fragments(threading.local):
    """The unfinished line of one thread and the level of its last message."""

    def __init__(self) -> None:
        self.level = GGML_LOG_LEVEL_INFO
        self.parts: list[bytes] = []


_fragments = _Fragments()


def _on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    state = _fragments
    if level == GGML_LOG_LEVEL_CONT:
        level = state.level
    elif level != state.level:
        if state.parts:
            _emit(state.level, b"".join(state.parts))
            state.parts = []
        state.level = level
    if not log.isEnabledFor(LOGGING_LEVELS.get(level, logging.DEBUG)):
        return  # the common case below -vv: nothing to join or format
    state.parts.append(text)
    if text.endswith(b"\n"):
        _emit(level, b"".join(state.parts))
        state.parts = []


def _emit(level: int, text: bytes) -> None:
    expected = any(e in text for e in EXPECTED_LOG_LINES)
    record_level = logging.DEBUG if expected else LOGGING_LEVELS.get(level, logging.DEBUG)
    for line in text.decode(errors="replace").splitlines():
        if line.strip():
            log.log(record_level, "%s", line.rstrip())


# Module-level, so the C side never calls a collected function.
_callback = llama_cpp.llama_log_callback(_on_log)


def route_llama_logs() -> None:
    """Send llama.cpp's (and ggml's) log to the "llama.cpp" logger from now on; idempotent."""
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
