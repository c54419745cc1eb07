"""Who may talk: persona access lists, global allow/deny lists, per-user rate limits.

Access lists and per-user budgets apply on the chat platforms, where the platform vouches for
the user id (`GOVERNED_PLATFORMS`). Elsewhere there is no such id: an HTTP request's `user` is
the caller's own claim (the HTTP server limits each client address instead), and the terminal,
`bots ask`, evals and benchmarks are the operator.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from bots.chat import notices
from bots.persona.model import Persona
from bots.settings import PolicySettings


@dataclass(frozen=True)
class Decision:
    """Allowed, or refused with a short reason a user may see and a wait before retrying."""

    allowed: bool
    reason: str = ""
    retry_after_s: float = 0.0


ALLOW = Decision(True)
GOVERNED_PLATFORMS = frozenset({"discord", "slack"})
# Users remembered before the expired ones are dropped (a flood of new ids stays bounded).
MAX_TRACKED_KEYS = 10_000


class RateLimiter:
    """At most `limit` messages per user in any `window_s` seconds (sliding window)."""

    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> Decision:
        if self.limit <= 0:
            return ALLOW
        now = self._clock()
        with self._lock:
            times = self._seen.setdefault(key, deque())
            while times and times[0] <= now - self.window_s:
                times.popleft()
            if len(times) >= self.limit:
                wait = times[0] + self.window_s - now
                return Decision(False, notices.too_fast(wait), wait)
            times.append(now)
            if len(self._seen) > MAX_TRACKED_KEYS:
                # Drop users whose whole window has passed (many one-off senders, e.g. IPs).
                self._seen = {k: v for k, v in self._seen.items() if v[-1] > now - self.window_s}
        return ALLOW


class NoticeThrottle:
    """Says a rate refusal once per wait, not at every message of a burst.

    `should_notify(key, wait_s)` is True for the first refusal of `key` and then False until
    `wait_s` has passed; a refusal with no wait (access) is always said.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}

    def should_notify(self, key: str, wait_s: float) -> bool:
        if wait_s <= 0:
            return True
        now = self._clock()
        if self._until.get(key, 0.0) > now:
            return False
        self._until[key] = now + wait_s
        if len(self._until) > MAX_TRACKED_KEYS:
            self._until = {k: t for k, t in self._until.items() if t > now}
        return True


class Policy:
    """Applies the global lists and per-persona access before any work is done; says which
    budget a message is charged to (the store keeps the budgets, shared by every instance)."""

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings

    def place_allowed(self, *, guild_id: str = "", channel_id: str = "", team_id: str = "") -> bool:
        """Global allowlists/denylists of guilds, workspaces and channels (empty allow = all)."""
        s = self.settings
        if guild_id and (
            guild_id in s.deny_guilds or (s.allow_guilds and guild_id not in s.allow_guilds)
        ):
            return False
        if team_id and s.allow_teams and team_id not in s.allow_teams:
            return False
        if channel_id in s.deny_channels and channel_id:
            return False
        return not (s.allow_channels and channel_id and channel_id not in s.allow_channels)

    @staticmethod
    def persona_allows(persona: Persona, user_id: str, roles: tuple[str, ...] = ()) -> bool:
        """Persona `access`: empty lists let everyone in; else the user or a role must match."""
        access = persona.access
        if not access.users and not access.roles:
            return True
        return user_id in access.users or any(r in access.roles for r in roles)

    def check(
        self, persona: Persona, platform: str, user_id: str, roles: tuple[str, ...] = ()
    ) -> Decision:
        """Whether `user_id` may talk to `persona` (always, off the governed platforms)."""
        if platform not in GOVERNED_PLATFORMS:
            return ALLOW
        if not self.persona_allows(persona, user_id, roles):
            return Decision(False, notices.no_access(persona))
        return ALLOW

    @staticmethod
    def budget_key(platform: str, user_id: str) -> str | None:
        """The rate budget a message is charged to; None off the governed platforms."""
        return f"{platform}:{user_id}" if platform in GOVERNED_PLATFORMS else None
