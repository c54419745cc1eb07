"""Who reads a Slack conversation: what decides which restricted documents an answer may use.

A direct message (`im`) is the asker alone; a private channel (`group`) or a group DM (`mpim`)
is its members, asked of Slack for every answer (membership changes); a public channel is
everyone. Where the event does not say (an `app_mention` carries no `channel_type`), the channel's
kind is asked of `conversations.info` and remembered for a minute. Whatever Slack cannot tell
(an API error, a member list in pages beyond the first) is everyone, which sees public documents
only.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.adapters.slack.reply import error_code
from bots.knowledge.audience import Reader

log = logging.getLogger(__name__)

PLATFORM = "slack"
KIND_TTL_S = 60.0
MEMBERS_LIMIT = 1000
EVERYONE = Reader(PLATFORM)


class SlackAudience:
    """Answers "who reads this channel" with the Web API."""

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client
        self._kinds: dict[str, tuple[float, str]] = {}

    async def reader(
        self, channel: str, user: str, *, channel_type: str = "", bot_user: str = ""
    ) -> Reader:
        """Who can read what the bot posts in `channel` for `user`'s message (the bot itself,
        `bot_user`, is not counted among the members)."""
        kind = channel_type or await self._kind(channel)
        if kind == "im":
            return Reader.alone(PLATFORM, user)
        if kind in ("group", "mpim"):
            members = [m for m in await self._members(channel) if m != bot_user]
            return Reader.members(PLATFORM, members) if members else EVERYONE
        return EVERYONE

    async def _kind(self, channel: str) -> str:
        if channel.startswith("D"):
            return "im"
        cached = self._kinds.get(channel)
        if cached and time.monotonic() - cached[0] < KIND_TTL_S:
            return cached[1]
        try:
            response = await self._client.conversations_info(channel=channel)
        except SlackApiError as exc:
            log.info("slack: cannot tell who reads %s (%s): everyone", channel, error_code(exc))
            return "channel"
        info: Any = response.get("channel") or {}
        kind = (
            "im"
            if info.get("is_im")
            else "mpim"
            if info.get("is_mpim")
            else "group"
            if info.get("is_private") or info.get("is_group")
            else "channel"
        )
        self._kinds[channel] = (time.monotonic(), kind)
        return kind

    async def _members(self, channel: str) -> list[str]:
        try:
            response = await self._client.conversations_members(
                channel=channel, limit=MEMBERS_LIMIT
            )
        except SlackApiError as exc:
            log.info("slack: cannot list %s's members (%s): everyone", channel, error_code(exc))
            return []
        if (response.get("response_metadata") or {}).get("next_cursor"):
            return []  # more members than one page: treated as everyone
        members = response.get("members") or []
        return [m for m in members if isinstance(m, str)]
