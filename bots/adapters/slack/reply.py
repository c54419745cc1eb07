"""Showing a reply in Slack while it is generated.

Two ways, same interface (`feed` pieces, then `finish` or `abort`):
- `StreamView`: Slack's streaming API (`chat.startStream`/`appendStream`/`stopStream`, through
  slack_sdk's `chat_stream`), Markdown rendered by Slack. Falls back to `UpdateView` when the
  workspace refuses it, and for a reply that waited in line (its place shows in a message a
  stream cannot take over).
- `UpdateView`: a placeholder message edited with `chat.update` (Markdown converted to mrkdwn) by
  the shared `StreamRenderer`, paced so that all replies together stay within Slack's Tier 3
  limit, and split into several messages beyond the size limit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_chat_stream import AsyncChatStream
from slack_sdk.web.async_client import AsyncWebClient

from bots.adapters.render import FENCE_ROOM, StreamRenderer, cut_point, open_fence, split_message
from bots.adapters.slack.format import neutralise_markdown, to_mrkdwn
from bots.adapters.slack.views import SECTION_CHARS, Block, section

log = logging.getLogger(__name__)

PLACEHOLDER = "…"
# Errors meaning this workspace or token cannot stream at all (not just this channel).
STREAMING_UNSUPPORTED = frozenset(
    {"unknown_method", "not_allowed_token_type", "feature_not_enabled", "method_deprecated"}
)
CUSTOMIZE_SCOPE = "chat:write.customize"


@dataclass(frozen=True)
class SlackLimits:
    """Slack's limits and the adapter's pacing; tests shrink them to run fast."""

    # Slack truncates at 40,000 characters but advises staying under 4,000 per message.
    message_chars: int = 3900
    # chat.update is Tier 3 (about 50 a minute); one reply alone edits at most this often.
    update_interval_s: float = 1.2
    updates_per_minute: int = 50
    # How often new streamed text is appended (chat.appendStream) while generating.
    stream_interval_s: float = 1.0
    # Socket Mode ping interval: a silent connection is replaced after about 4 of these.
    ping_interval_s: float = 10.0
    # Slack retries an event up to 3 times within about 5 minutes; remember far longer.
    dedup_ttl_s: float = 3600.0
    # conversations.replies is limited to 1 request a minute for apps outside the Marketplace.
    replies_interval_s: float = 60.0
    # On stop, in-flight replies get this long to finish before they are cut with a note.
    stop_grace_s: float = 10.0


@dataclass(frozen=True)
class Identity:
    """Who a message appears to come from (needs the chat:write.customize scope)."""

    username: str
    icon_url: str = ""

    def args(self) -> dict[str, str]:
        return {"username": self.username, **({"icon_url": self.icon_url} if self.icon_url else {})}


class ReplyView(Protocol):
    """Where a reply's text goes while and after it is generated."""

    @property
    def message_ids(self) -> list[str]:
        """The messages showing the reply so far, in order."""

    async def open(self) -> None:
        """Show that a reply is coming (called while the prompt is being prepared)."""

    async def wait(self, notice: str) -> None:
        """Show where the question stands in line until the reply replaces it."""

    async def feed(self, piece: str) -> None: ...

    async def finish(self, blocks: Sequence[Block] = ()) -> None: ...

    async def abort(self, note: str) -> None: ...


class EditPacer:
    """Spaces edits so that all replies being written at once stay within Slack's limit."""

    def __init__(self, base_interval_s: float, per_minute: int) -> None:
        self.base_interval_s = base_interval_s
        self.per_minute = per_minute
        self.active = 0

    def interval(self) -> float:
        return max(self.base_interval_s, 60.0 * max(self.active, 1) / self.per_minute)


class Poster:
    """Posts and edits the bot's messages, as a persona while the workspace allows it."""

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client
        self.customize = True

    async def post(
        self,
        channel: str,
        text: str,
        *,
        thread_ts: str = "",
        identity: Identity | None = None,
    ) -> str:
        """Post a message; returns its ts."""
        args: dict[str, Any] = {"channel": channel, "text": text, "unfurl_links": False}
        if thread_ts:
            args["thread_ts"] = thread_ts
        if identity is not None and self.customize:
            try:
                response = await self.client.chat_postMessage(**{**args, **identity.args()})
                return str(response["ts"])
            except SlackApiError as exc:
                if not lacks_customize(exc):
                    raise
                self.customize = False
                log.warning("slack: the app lacks %s; posting under its own name", CUSTOMIZE_SCOPE)
        response = await self.client.chat_postMessage(**args)
        return str(response["ts"])

    async def update(self, channel: str, ts: str, text: str, blocks: Sequence[Block] = ()) -> None:
        args: dict[str, Any] = {"channel": channel, "ts": ts, "text": text}
        if blocks:
            args["blocks"] = list(blocks)
        await self.client.chat_update(**args)


def lacks_customize(exc: SlackApiError) -> bool:
    data = exc.response.data if isinstance(exc.response.data, dict) else {}
    return data.get("error") == "missing_scope" and CUSTOMIZE_SCOPE in str(data.get("needed", ""))


def error_code(exc: SlackApiError) -> str:
    data = exc.response.data if isinstance(exc.response.data, dict) else {}
    return str(data.get("error", ""))


def final_blocks(mrkdwn: str, extra: Sequence[Block]) -> list[Block]:
    """A message's text as section blocks (3,000 characters each) followed by `extra`."""
    return [section(part) for part in split_message(mrkdwn, SECTION_CHARS)] + list(extra)


class UpdateView:
    """A placeholder message edited as text arrives; more messages when the text outgrows one."""

    def __init__(
        self,
        poster: Poster,
        channel: str,
        thread_ts: str,
        identity: Identity,
        limits: SlackLimits,
        pacer: EditPacer,
        *,
        placeholder_ts: str = "",
    ) -> None:
        self.poster = poster
        self.channel = channel
        self.thread_ts = thread_ts
        self.identity = identity
        self.pacer = pacer
        self._placeholder = placeholder_ts
        self._texts: dict[str, str] = {}
        self.renderer = StreamRenderer(self, limits.message_chars, pacer.interval())
        self.message_ids = self.renderer.message_ids

    async def open(self) -> None:
        """Show that a reply is coming, before the first word is generated."""
        if not self._placeholder:
            self._placeholder = await self.poster.post(
                self.channel, PLACEHOLDER, thread_ts=self.thread_ts, identity=self.identity
            )

    async def send(self, text: str) -> str:
        if self._placeholder and not self.message_ids:
            await self.edit(self._placeholder, text)
            return self._placeholder
        mrkdwn = to_mrkdwn(text)
        ts = await self.poster.post(
            self.channel, mrkdwn, thread_ts=self.thread_ts, identity=self.identity
        )
        self._texts[ts] = mrkdwn
        return ts

    async def edit(self, message_id: str, text: str) -> None:
        mrkdwn = to_mrkdwn(text)
        await self.poster.update(self.channel, message_id, mrkdwn)
        self._texts[message_id] = mrkdwn

    async def wait(self, notice: str) -> None:
        """The place in line shows in the placeholder (or a message of its own without one)."""
        await self.renderer.hold(notice)

    async def feed(self, piece: str) -> None:
        self.renderer.interval_s = self.pacer.interval()
        await self.renderer.feed(piece)

    async def finish(self, blocks: Sequence[Block] = ()) -> None:
        await self.renderer.finish()
        if blocks and self.message_ids:
            last = self.message_ids[-1]
            text = self._texts[last]
            await self.poster.update(self.channel, last, text, final_blocks(text, blocks))

    async def abort(self, note: str) -> None:
        if not self.message_ids and self._placeholder and not self.renderer.text.strip():
            await self.poster.update(self.channel, self._placeholder, to_mrkdwn(note))
            self.message_ids.append(self._placeholder)
            return
        await self.renderer.finish(footer=f"_{note}_")


class StreamView:
    """A reply streamed with Slack's streaming API, several streams when it outgrows one message.

    Text is handed over up to the last whitespace only: mentions and broadcasts never contain
    whitespace, so each flushed stretch can be neutralised on its own.
    """

    def __init__(
        self,
        poster: Poster,
        channel: str,
        thread_ts: str,
        identity: Identity,
        recipient: tuple[str, str] | None,
        limits: SlackLimits,
        make_fallback: Callable[[str], UpdateView],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.poster = poster
        self.channel = channel
        self.thread_ts = thread_ts
        self.identity = identity
        self.recipient = recipient  # (user, team): Slack requires it outside DMs
        self.limits = limits
        self.make_fallback = make_fallback
        self.clock = clock
        self.unsupported = False
        self.text = ""
        self._streamed: list[str] = []
        self._sent = 0
        self._stream: AsyncChatStream | None = None
        self._stream_start = 0
        self._reopen = ""  # the fence reopened at the start of the current stream
        self._last = 0.0
        self._fallback: UpdateView | None = None

    @property
    def message_ids(self) -> list[str]:
        return self._streamed + (self._fallback.message_ids if self._fallback else [])

    async def open(self) -> None:
        """Nothing to show yet: a stream begins with its first text."""

    async def wait(self, notice: str) -> None:
        """A stream cannot take over a message already posted, so a reply that waits in line
        is written with chat.update in the message that shows its place."""
        if self._fallback is None and self._stream is None:
            self._fallback = self.make_fallback("")
        if self._fallback is not None:
            await self._fallback.wait(notice)

    async def feed(self, piece: str) -> None:
        if self._fallback is not None:
            await self._fallback.feed(piece)
            return
        self.text += piece
        if self.clock() - self._last >= self.limits.stream_interval_s:
            cut = max(self.text.rfind(" "), self.text.rfind("\n")) + 1
            if cut > self._sent and self.text[self._sent : cut].strip():
                self._last = self.clock()
                await self._push(cut)

    async def finish(self, blocks: Sequence[Block] = ()) -> None:
        if self._fallback is None:
            if not self.text.strip():
                self.text = PLACEHOLDER
            await self._push(len(self.text))
        if self._fallback is None and self._stream is not None:
            try:
                await self._stream.stop(blocks=list(blocks) or None)
                return
            except SlackApiError as exc:
                await self._fall_back(exc)
        if self._fallback is not None:
            await self._fallback.finish(blocks)

    async def abort(self, note: str) -> None:
        if self._fallback is None:
            self.text = self.text.rstrip() + f"\n\n_{note}_"
            await self.finish()
        else:
            await self._fallback.abort(note)

    async def _push(self, end: int) -> None:
        """Hand `text[_sent:end]` to Slack, starting a new stream where one is full.

        A code block cut between two streams is closed at the end of the first and reopened
        (with its language) at the start of the next, as `split_message` does for edits.
        """
        limit = self.limits.message_chars - FENCE_ROOM
        while self._sent < end and self._fallback is None:
            if self._stream is not None and self._used() + (end - self._sent) > limit:
                fence = open_fence(self._reopen + self.text[self._stream_start : self._sent])
                try:
                    if fence is not None:
                        await self._stream.append(markdown_text="\n" + fence[0])
                    await self._stream.stop()
                except SlackApiError as exc:
                    await self._fall_back(exc)
                    return
                self._stream = None
                self._reopen = fence[0] + fence[1] + "\n" if fence is not None else ""
            prefix = ""
            if self._stream is None:
                self._stream_start = self._sent
                self._stream = await self._open_stream()
                prefix = self._reopen
            room = limit - self._used()
            fits = end - self._sent <= room
            stop = end if fits else self._sent + cut_point(self.text[self._sent : end], room)
            chunk = prefix + neutralise_markdown(self.text[self._sent : stop])
            try:
                await self._stream.append(markdown_text=chunk)
            except SlackApiError as exc:
                await self._fall_back(exc)
                return
            if self._stream.ts and self._stream.ts not in self._streamed:
                self._streamed.append(self._stream.ts)
            self._sent = stop

    def _used(self) -> int:
        """Characters the current stream holds (its reopened fence included)."""
        return len(self._reopen) + self._sent - self._stream_start

    async def _open_stream(self) -> AsyncChatStream:
        args: dict[str, Any] = self.identity.args() if self.poster.customize else {}
        if self.recipient is not None:
            args["recipient_user_id"], args["recipient_team_id"] = self.recipient
        # buffer_size=1: this view paces appends itself; the helper must not hold text back.
        return await self.poster.client.chat_stream(
            buffer_size=1, channel=self.channel, thread_ts=self.thread_ts, **args
        )

    async def _fall_back(self, exc: SlackApiError) -> None:
        """Streaming failed: go on with chat.update, in the current stream's message if any."""
        code = error_code(exc)
        current = self._stream.ts if self._stream is not None and self._stream.ts else ""
        if not current and code in STREAMING_UNSUPPORTED:
            self.unsupported = True
        log.info("slack: streaming failed (%s); going on with chat.update", code or exc)
        if current in self._streamed:
            self._streamed.remove(current)
        self._fallback = self.make_fallback(current)
        await self._fallback.open()
        # Earlier, full streams stay as they are; the fallback carries on from this one.
        await self._fallback.feed(self._reopen + self.text[self._stream_start :])
