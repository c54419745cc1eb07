"""The model worker: a child process that owns a local engine and talks to its supervisor.

`SupervisedEngine` (bots.engine.process.supervisor) runs `python -m bots.engine.process.worker`;
the two speak the frames of bots.engine.process.wire on the worker's stdin and stdout. The
worker builds its engine with `make_local_engine`: whatever the settings say, never a
supervisor of its own.

Native code (llama.cpp) may print to fd 1, so the frames use a private copy of it and fd 1 is
pointed at stderr, which the worker shares with its parent for logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from bots.engine.base import Engine, EngineBusy, EngineTimeout, GenerationRequest, Piece
from bots.engine.local import make_local_engine
from bots.engine.process.wire import MAX_FRAME_BYTES, Frame, FrameError, encode, read_frame
from bots.logs import setup_logging

log = logging.getLogger("bots.engine.process.worker")  # not __main__ under `python -m`

# Asked of the kernel: under memory pressure, kill the worker (which holds the model), not the bot.
OOM_SCORE_ADJ = 500
ENGINE_CLOSE_TIMEOUT_S = 10.0
# Pieces closer together than this share a frame (at most 10 ms added to a piece's way).
PIECE_BATCH_S = 0.01
EXIT_LOAD_FAILED = 2


class FrameOutbox:
    """Frames to the parent. Pieces are sent at once unless a frame left less than
    PIECE_BATCH_S ago; then they wait for the rest of that interval and go together, so a fast
    model (a GPU, many streams) wakes the parent at most 1 / PIECE_BATCH_S times a second."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pieces: list[tuple[int, Piece]] = []
        self._scheduled = False
        self._last_sent = 0.0

    def piece(self, rid: int, piece: Piece) -> None:
        self._pieces.append((rid, piece))
        if not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            loop.call_later(max(0.0, self._last_sent + PIECE_BATCH_S - loop.time()), self._due)

    def send(self, frame: Frame) -> None:
        # Pieces go first so that an error or status never overtakes the text before it.
        self._flush()
        self._writer.write(encode(frame))

    def _due(self) -> None:
        self._scheduled = False
        self._flush()

    def _flush(self) -> None:
        if self._pieces:
            pieces, self._pieces = self._pieces, []
            self._writer.write(encode(("pieces", pieces)))
            self._last_sent = asyncio.get_running_loop().time()

    async def drain(self) -> None:
        self._flush()
        await self._writer.drain()


class RequestServer:
    """Runs the supervisor's requests on the engine, one task per request."""

    def __init__(self, engine: Engine, outbox: FrameOutbox) -> None:
        self.engine = engine
        self.outbox = outbox
        self.tasks: dict[int, asyncio.Task[None]] = {}

    async def serve(self, reader: asyncio.StreamReader) -> None:
        """Until ("stop",) or the parent goes away (end of stdin)."""
        try:
            while True:
                try:
                    frame = await read_frame(reader)
                except asyncio.IncompleteReadError:
                    log.warning("the supervisor went away; the model worker stops")
                    return
                kind = frame[0]
                if kind == "gen":
                    _, rid, request = frame
                    self.tasks[rid] = asyncio.create_task(self._generate(rid, request))
                elif kind == "cancel":
                    task = self.tasks.get(frame[1])
                    if task is not None:
                        # Frames take effect in order: the next "gen" must find the engine's
                        # queue without this request, as the supervisor already counts it.
                        task.cancel()
                        await asyncio.wait([task])
                elif kind == "status":
                    self.outbox.send(("status", self.engine.status()))
                elif kind == "stop":
                    return
                else:
                    raise FrameError(f"unknown frame {kind!r}")
        finally:
            for task in self.tasks.values():
                task.cancel()
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    async def _generate(self, rid: int, request: GenerationRequest) -> None:
        pieces = self.engine.stream(request)
        try:
            async for piece in pieces:
                self.outbox.piece(rid, piece)
        except EngineBusy as exc:
            self.outbox.send(("error", rid, "busy", str(exc), exc.retry_after_s))
        except EngineTimeout as exc:
            self.outbox.send(("error", rid, "timeout", str(exc), 0.0))
        except asyncio.CancelledError:
            pass  # the parent cancelled (or is stopping us): it expects no answer
        except Exception as exc:  # EngineError or a bug: the caller gets it, the worker goes on
            self.outbox.send(("error", rid, "error", str(exc) or type(exc).__name__, 0.0))
        finally:
            await pieces.aclose()  # type: ignore[attr-defined]
            self.tasks.pop(rid, None)


async def _connect(in_fd: int, out_fd: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_FRAME_BYTES)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(in_fd, "rb", buffering=0)
    )
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(out_fd, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    return reader, writer


async def run(in_fd: int, out_fd: int) -> int:
    """Load the engine the init frame describes, then serve requests; the exit status."""
    reader, writer = await _connect(in_fd, out_fd)
    outbox = FrameOutbox(writer)
    try:
        _, settings, model_path, log_level, log_json = await read_frame(reader)
    except asyncio.IncompleteReadError:
        return 0
    setup_logging(level=log_level, json_logs=log_json)
    try:
        engine = make_local_engine(settings, model_path)
        await engine.start()
    except Exception as exc:  # a missing or unreadable model: the parent reports it
        log.error("the model worker could not load the model: %s", exc)
        outbox.send(("failed", f"could not load the model: {exc}"))
        await outbox.drain()
        return EXIT_LOAD_FAILED
    status = engine.status()
    outbox.send(("ready", engine.context_size, status.model, status.queue_capacity))
    log.info("model worker ready (pid %d, %s)", os.getpid(), status.model)
    try:
        await RequestServer(engine, outbox).serve(reader)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(engine.close(), ENGINE_CLOSE_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await outbox.drain()
    return 0


def _prefer_oom_kill() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text(str(OOM_SCORE_ADJ))


def main() -> None:
    """Entry point of the worker process."""
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    # The supervisor decides when the worker stops: a terminal's Ctrl-C or a service manager's
    # SIGTERM to the whole group must not kill the replies the bot is finishing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _prefer_oom_kill()
    sys.exit(asyncio.run(run(in_fd, out_fd)))


if __name__ == "__main__":
    main()
