"""Discord's REST rate limits honoured across the instances on one bot token.

discord.py keeps its buckets in the process that learnt them: on several instances each would
spend the same bucket and each would be given its own 429. So every client's aiohttp session
carries a trace (`discord.Client(http_trace=...)`): when a response says a bucket is spent (a 429
with `Retry-After`, or `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset-After`) or that the
bot hit the global limit (`X-RateLimit-Global`), the store blocks that route for every instance;
before a request is sent it waits out a live block on its route or the bot's global one. A store
that does not answer holds nothing up: discord.py handles a 429 as it does on one machine.
On SQLite there is no shared store and no trace: one process, exactly discord.py's own handling.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping
from types import SimpleNamespace

import aiohttp
import discord
import yarl

from bots.store.base import RestLimits, StoreUnavailable

log = logging.getLogger(__name__)

# However often other instances renew a block, a request waits at most this long for it.
MAX_SHARED_WAIT_S = 60.0
# Path segments kept as they are: Discord's "major parameters" (each has buckets of its own).
MAJOR = frozenset({"channels", "guilds", "webhooks"})
# The segment after these ids is a secret token: never written to the database.
TOKENED = frozenset({"webhooks", "interactions"})


def bot_of(headers: Mapping[str, str]) -> str:
    """Which bot a request spends the limits of: a short hash of its token (webhook calls
    carry none and are limited per webhook)."""
    auth = headers.get("Authorization", "")
    if not auth:
        return "webhook"
    return hashlib.sha256(auth.encode()).hexdigest()[:12]


def route_of(method: str, url: yarl.URL, api: str) -> str | None:
    """`POST /channels/123/messages`: the request's bucket as Discord keys it (major ids kept,
    other ids and tokens replaced); None for a URL outside the REST API at `api` (the gateway)."""
    base = yarl.URL(api)
    if url.host != base.host or url.port != base.port or not url.path.startswith(base.path):
        return None
    parts = url.path.removeprefix(base.path).strip("/").split("/")
    for i, part in enumerate(parts):
        before = parts[i - 1] if i >= 1 else ""
        if before in MAJOR:
            continue
        if i >= 2 and parts[i - 2] in TOKENED:
            parts[i] = "{token}"
        elif part.isdigit():
            parts[i] = "{id}"
    return f"{method.upper()} /{'/'.join(parts)}"


def blocks_of(status: int, headers: Mapping[str, str]) -> tuple[bool, float] | None:
    """(global?, seconds) a response blocks for, or None when it leaves the bucket usable."""
    try:
        if status == 429:
            seconds = float(headers.get("Retry-After", "0"))
            return headers.get("X-RateLimit-Global", "").lower() == "true", seconds
        if headers.get("X-RateLimit-Remaining") == "0":
            return False, float(headers.get("X-RateLimit-Reset-After", "0"))
    except ValueError:
        log.debug("unreadable rate-limit headers: %s", dict(headers))
    return None


class SharedRestLimits:
    """The trace that shares one client's rate-limit state through the store."""

    def __init__(self, limits: RestLimits) -> None:
        self.limits = limits

    def trace(self) -> aiohttp.TraceConfig:
        config = aiohttp.TraceConfig()
        config.on_request_start.append(self._starting)
        config.on_request_end.append(self._ended)
        return config

    async def _starting(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        route = route_of(params.method, params.url, discord.http.Route.BASE)
        if route is None:
            return
        bot = bot_of(params.headers)
        keys = [f"discord:{bot}:{route}", f"discord:{bot}:global"]
        deadline = time.monotonic() + MAX_SHARED_WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                wait = await self.limits.blocked_for(keys)
            except StoreUnavailable as exc:
                log.debug("shared rate limits unknown (%s); sending", exc)
                return
            if wait <= 0:
                return
            log.info("Discord %s: waiting %.2fs for a limit another instance hit", route, wait)
            await asyncio.sleep(min(wait, left))

    async def _ended(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        route = route_of(params.method, params.url, discord.http.Route.BASE)
        blocked = blocks_of(params.response.status, params.response.headers)
        if route is None or blocked is None or blocked[1] <= 0:
            return
        is_global, seconds = blocked
        key = f"discord:{bot_of(params.headers)}:{'global' if is_global else route}"
        try:
            await self.limits.block(key, seconds)
        except StoreUnavailable as exc:
            log.warning("could not share a Discord rate limit (%s): %s", key, exc)
