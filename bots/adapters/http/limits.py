"""Per-client limits of the HTTP server, so that one client's flood leaves the others served.

A client is the address it connects from; behind a reverse proxy listed in
`server.trusted_proxies`, the address that proxy reports in `X-Forwarded-For`. The API token is
one secret shared by every caller, so it names no client, and a request's `user` field is the
caller's own claim: neither is ever a key. Each client may have `server.max_in_flight_per_client`
replies being generated and start `server.rate_limit_requests` per `server.rate_limit_window_s`;
beyond either it is refused at once, with the seconds to wait.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from bots.chat.policy import NoticeThrottle, RateLimiter
from bots.chat.reply import ReplyRecord
from bots.engine.base import Usage
from bots.settings import ServerSettings

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# A reply takes seconds: a client at its in-flight cap that retries sooner is only refused again.
IN_FLIGHT_RETRY_AFTER_S = 2
UNKNOWN_PEER = "unknown"
OUTCOME = "rate_limited"


@dataclass(frozen=True)
class Limited:
    """Why a client must wait, and how long (whole seconds, at least 1, for `Retry-After`)."""

    message: str
    retry_after_s: int


class ClientLimits:
    """In-flight and rate limits per client, shared by every route that starts a reply."""

    def __init__(
        self,
        server: ServerSettings,
        *,
        on_limited: Callable[[ReplyRecord], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_in_flight = server.max_in_flight_per_client
        self.rate = RateLimiter(server.rate_limit_requests, server.rate_limit_window_s, clock)
        self._proxies = tuple(ipaddress.ip_network(p, strict=False) for p in server.trusted_proxies)
        self._on_limited = on_limited
        self._in_flight: dict[str, int] = {}
        self._logged = NoticeThrottle(clock)

    def client(self, request: web.Request) -> str:
        """The client's address: the peer, or what trusted proxies say they were handed.

        `X-Forwarded-For` is read from the right: each trusted proxy appended the address it
        was connected from, so the first hop that is not a trusted proxy is the client, and
        anything further left is whatever the client chose to write.
        """
        client = _address(request.remote or "")
        if client is None:
            return request.remote or UNKNOWN_PEER
        hops = ",".join(request.headers.getall("X-Forwarded-For", ())).split(",")
        while hops and self._trusted(client):
            hop = _address(hops.pop())
            if hop is None:
                break  # a proxy we trust wrote something that is no address: key on that proxy
            client = hop
        return str(client)

    def admit(self, client: str, persona_id: str, platform: str) -> Limited | None:
        """Take a slot for one reply (give it back with `release`), or say why not."""
        limited = self._check(client)
        if limited is None:
            self._in_flight[client] = self._in_flight.get(client, 0) + 1
            return None
        if self._logged.should_notify(client, limited.retry_after_s):
            log.warning("http: client %s is over its limit: %s", client, limited.message)
        if self._on_limited is not None:
            self._on_limited(ReplyRecord(persona_id, platform, OUTCOME, Usage(), 0.0))
        return limited

    def release(self, client: str) -> None:
        """The reply `admit` let through has ended (finished, failed or abandoned)."""
        left = self._in_flight.get(client, 0) - 1
        if left > 0:
            self._in_flight[client] = left
        else:
            self._in_flight.pop(client, None)

    def _check(self, client: str) -> Limited | None:
        # The in-flight cap is checked first, so a refused request uses no place in the window.
        if 0 < self.max_in_flight <= self._in_flight.get(client, 0):
            return Limited(
                f"too many requests at once: at most {self.max_in_flight} replies per client "
                "are generated at a time; retry when one has finished",
                IN_FLIGHT_RETRY_AFTER_S,
            )
        decision = self.rate.check(client)
        if decision.allowed:
            return None
        wait = max(1, math.ceil(decision.retry_after_s))
        return Limited(
            f"too many requests: at most {self.rate.limit} per {self.rate.window_s:g}s "
            f"per client; retry in {wait}s",
            wait,
        )

    def _trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self._proxies)


def _address(text: str) -> IPAddress | None:
    """An address from a peer or a forwarded hop (`[v6]:port` and `v4:port` too), or None."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # one IPv4 client on a dual-stack socket is one client
    return address


CLIENT_LIMITS_KEY = web.AppKey("bots_client_limits", ClientLimits)
