"""The frames a supervisor and its model worker exchange over the worker's stdin and stdout.

A frame is a 4-byte big-endian length, then a pickle: the pipes are private to the two
processes, and pickle carries the frozen dataclasses (settings, requests, pieces) as they are.

Supervisor -> worker: ("init", settings, model_path, log_level, log_json) first; then
("gen", id, request), ("cancel", id), ("status",) and ("stop",).
Worker -> supervisor: ("ready", context_size, model, queue_capacity) or ("failed", message) once
loaded; then ("pieces", [(id, piece), ...]), ("error", id, kind, message, retry_after_s) with kind
"busy", "timeout" or "error", and ("status", EngineStatus).
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

FRAME_HEADER = struct.Struct(">I")
# A frame holds one request (a prompt of at most the context window) or a batch of pieces.
MAX_FRAME_BYTES = 64 * 1024 * 1024

Frame = tuple[Any, ...]


class FrameError(RuntimeError):
    """The other side sent something that is not a frame (a bug, or a process gone wrong)."""


def encode(frame: Frame) -> bytes:
    """One frame, ready to write."""
    data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME_HEADER.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """The next frame; raises asyncio.IncompleteReadError when the other side has gone."""
    (size,) = FRAME_HEADER.unpack(await reader.readexactly(FRAME_HEADER.size))
    if size > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {size} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    data = await reader.readexactly(size)
    try:
        frame = pickle.loads(data)
    except Exception as exc:  # whatever a damaged stream unpickles to
        raise FrameError(f"undecodable frame: {exc}") from exc
    if not isinstance(frame, tuple) or not frame:
        raise FrameError(f"not a frame: {type(frame).__name__}")
    return frame
