"""The Adapter seam: a platform connection that `bots serve` starts and stops."""

from __future__ import annotations

from typing import Protocol


class Adapter(Protocol):
    """A platform (Discord, Slack, ...) served alongside the HTTP API."""

    name: str

    async def start(self) -> None:
        """Connect and begin answering; return once connected (or raise with a clear reason)."""

    async def stop(self) -> None:
        """Stop taking new messages, finish or abandon in-flight replies, disconnect."""
