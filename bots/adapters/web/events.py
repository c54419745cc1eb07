"""Server-sent events to every open workbench page: persona states, eval results, changes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

# A page that stops reading (a sleeping phone) is dropped once this many events wait for it;
# its EventSource reconnects and gets the current state again.
QUEUE_LIMIT = 64
# A comment line this often keeps proxies from closing an idle stream.
KEEPALIVE_S = 15.0


@dataclass(frozen=True)
class ServerEvent:
    """One event: its name and its data (text; several lines are sent as several `data:`)."""

    name: str
    data: str

    def encode(self) -> bytes:
        lines = "".join(f"data: {line}\n" for line in self.data.split("\n"))
        return f"event: {self.name}\n{lines}\n".encode()


def json_event(name: str, **data: object) -> ServerEvent:
    return ServerEvent(name, json.dumps(data, ensure_ascii=False))


class EventHub:
    """Fans events out to the connected pages; used only on the event loop thread."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[ServerEvent | None]] = set()
        self._closed = False

    @property
    def connected(self) -> int:
        return len(self._queues)

    def publish(self, event: ServerEvent) -> None:
        for queue in list(self._queues):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._queues.discard(queue)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)

    def close(self) -> None:
        """End every stream (at shutdown, so the server need not wait for them)."""
        self._closed = True
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        self._queues.clear()

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[ServerEvent | None]]:
        # One slot more than the limit, so a dropped page's end marker always fits.
        queue: asyncio.Queue[ServerEvent | None] = asyncio.Queue(QUEUE_LIMIT + 1)
        if self._closed:
            queue.put_nowait(None)
        else:
            self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    async def stream(self, request: web.Request, first: list[ServerEvent]) -> web.StreamResponse:
        """Answer an EventSource request: `first` (the current state), then every event."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        async with self.subscribe() as queue:
            try:
                for event in first:
                    await response.write(event.encode())
                while True:
                    try:
                        item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        await response.write(b": keep-alive\n\n")
                        continue
                    if item is None:
                        break
                    await response.write(item.encode())
            except ConnectionResetError:  # the page went away
                return response
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response
