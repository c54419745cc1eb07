"""Discord on several instances: each gateway shard is held by exactly one instance.

Discord delivers a guild's events on one shard (`guild_id >> 22 % shard_count`), and a second
connection identifying as the same shard would knock the first off. So an instance connects as
shard k only while it holds the store's lease `discord-shard:k/n` (a PostgreSQL advisory lock on
its standing connection); the others stand by and try again every LEASE_POLL_S. When the holder
dies its lock goes with its connection and a standby connects within a poll or two; when the
holder loses its database connection it drops the shard at once, since another instance may
already have taken it. The shards are shared out: an instance claims shards up to its fair
share (shard count / instances running Discord, rounded up) and hands back, gracefully, what it
holds above that when more instances join. REST rate limits are one budget per token whichever
instance spends it: a bucket one instance found spent blocks the others too
(`bots.adapters.discord.ratelimits`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable

from bots.adapters.discord.bot import DiscordAdapter
from bots.chat.service import ChatService
from bots.store.base import Held

log = logging.getLogger(__name__)

LEASE_POLL_S = 0.5
# A shard whose lease was lost is cut off this fast: another instance may be connecting.
LOST_STOP_GRACE_S = 0.0

AdapterMaker = Callable[[dict[str, str], tuple[int, int], float | None], DiscordAdapter]


class ShardedDiscord:
    """Connects the shards this instance holds the lease of (see the module docstring)."""

    name = "discord"

    def __init__(
        self, service: ChatService, connections: dict[str, str], make: AdapterMaker
    ) -> None:
        self.service = service
        self.connections = connections
        self.count = service.settings.discord.shard_count
        self._make = make
        self._held: dict[int, tuple[Held, DiscordAdapter]] = {}
        self._task: asyncio.Task[None] | None = None
        self.takeovers = 0

    @property
    def shards(self) -> list[int]:
        """The shards this instance is connected as."""
        return sorted(self._held)

    async def start(self) -> None:
        """Connect every shard whose lease is free now (a bad token fails here, as without
        shards); stand by for the others."""
        await self._claim(first=True)
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for shard in list(self._held):
            await self._drop(shard, graceful=True)
        self.connections[self.name] = "stopped"

    def _fair_share(self) -> int:
        return math.ceil(self.count / self.service.peers(self.name))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(LEASE_POLL_S)
            if not self.service.accepting_work():
                return  # stopping: `stop` lets the shards go
            try:
                for shard, (lease, _) in list(self._held.items()):
                    if lease.lost:
                        log.warning("Discord shard %d: lease lost; disconnecting", shard)
                        await self._drop(shard, graceful=False)
                if len(self._held) > self._fair_share():
                    shard = max(self._held)
                    log.info("Discord shard %d: handed back to share the shards out", shard)
                    await self._drop(shard, graceful=True)
                await self._claim(first=False)
                self._summarise()
            except Exception:  # the watch must outlive any one failure
                log.exception("Discord shard watch failed; trying again")

    async def _claim(self, *, first: bool) -> None:
        for shard in range(self.count):
            if shard in self._held:
                continue
            # At start this instance is not counted yet: it may take every free shard.
            if not first and len(self._held) >= self._fair_share():
                break
            lease = await self.service.try_lease(f"discord-shard:{shard}/{self.count}")
            if lease is None:
                continue
            adapter = self._make({}, (shard, self.count), None)
            try:
                await adapter.start()
            except Exception:
                await lease.release()
                if first:
                    raise
                log.exception("Discord shard %d: could not connect; trying again", shard)
                continue
            except BaseException:  # cancelled: the bot is stopping
                await adapter.stop()
                await lease.release()
                raise
            self._held[shard] = (lease, adapter)
            if not first:
                self.takeovers += 1
            log.info("Discord shard %d/%d: connected (lease held)", shard, self.count)
        self._summarise()

    async def _drop(self, shard: int, *, graceful: bool) -> None:
        lease, adapter = self._held.pop(shard)
        if not graceful:
            adapter.stop_grace_s = LOST_STOP_GRACE_S
        try:
            await adapter.stop()
        finally:
            await lease.release()
            self._summarise()

    def _summarise(self) -> None:
        if not self._held:
            self.connections[self.name] = "standby (another instance holds the gateway)"
            return
        states = [
            f"shard {k}/{self.count} {a.connections.get('discord', 'connecting')}"
            for k, (_, a) in sorted(self._held.items())
        ]
        self.connections[self.name] = ", ".join(states)
