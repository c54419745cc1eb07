"""One Slack reply for the shared lifecycle: where it shows, how a notice is said, reactions.

`SlackSurface` is what `bots.adapters.delivery` needs of Slack for one reply in a thread: a view
(Slack's streaming API where the workspace offers it, else a placeholder edited with
`chat.update`), refusals said with `chat.postEphemeral` (only the asker sees them), a reaction on
the asker's message for a busy or failed reply, and `channel:ts` as the key of the shown reply.
`RespondSurface` answers through a slash command's `response_url` where the bot cannot post.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.adapters.delivery import Mark
from bots.adapters.slack.format import escape, to_mrkdwn
from bots.adapters.slack.reply import (
    EditPacer,
    Identity,
    Poster,
    ReplyView,
    SlackLimits,
    StreamView,
    UpdateView,
    error_code,
    final_blocks,
)
from bots.adapters.slack.views import sources_block
from bots.knowledge.model import Hit
from bots.persona.model import Persona

log = logging.getLogger(__name__)

BUSY_REACTION = "hourglass_flowing_sand"
ERROR_REACTION = "x"
REACTIONS: dict[Mark, str] = {"busy": BUSY_REACTION, "failed": ERROR_REACTION}
# Slack accepts this many responses to one slash command's response_url (within 30 minutes).
RESPONSE_URL_USES = 5


class Streaming:
    """Whether to try Slack's streaming API; off for good once the workspace refuses it."""

    def __init__(self, on: bool) -> None:
        self.on = on


@dataclass(frozen=True)
class SlackPlace:
    """The adapter's parts a reply uses (shared by every reply)."""

    client: AsyncWebClient
    poster: Poster
    limits: SlackLimits
    pacer: EditPacer
    streaming: Streaming
    identity: Callable[[Persona], Identity]


@dataclass(frozen=True)
class SlackSurface:
    """A reply in `thread_ts` of `channel`, to the message `source_ts` of `user`.

    `recipient` (user, team) is what Slack's streaming API requires outside DMs.
    """

    place: SlackPlace
    channel: str
    thread_ts: str
    source_ts: str
    user: str
    recipient: tuple[str, str] | None
    explicit: bool = True

    def view(self, persona: Persona) -> SlackView:
        place = self.place
        identity = place.identity(persona)

        def updates(placeholder_ts: str = "") -> UpdateView:
            return UpdateView(
                place.poster,
                self.channel,
                self.thread_ts,
                identity,
                place.limits,
                place.pacer,
                placeholder_ts=placeholder_ts,
            )

        inner: ReplyView
        if place.streaming.on:
            inner = StreamView(
                place.poster,
                self.channel,
                self.thread_ts,
                identity,
                self.recipient,
                place.limits,
                updates,
            )
        else:
            inner = updates()
        return SlackView(self, inner, identity)

    async def notice(self, text: str) -> None:
        """A message only the asker sees, in the thread."""
        args: dict[str, Any] = {"channel": self.channel, "user": self.user, "text": escape(text)}
        if self.thread_ts:
            args["thread_ts"] = self.thread_ts
        try:
            await self.place.client.chat_postEphemeral(**args)
        except SlackApiError as exc:
            log.info("slack: could not tell %s: %s", self.user, error_code(exc))

    async def mark(self, mark: Mark) -> None:
        name = REACTIONS[mark]
        try:
            await self.place.client.reactions_add(
                channel=self.channel, timestamp=self.source_ts, name=name
            )
        except SlackApiError as exc:
            log.debug("slack: reaction %s not added: %s", name, error_code(exc))

    def shown_key(self, message_ids: list[str]) -> str:
        return f"{self.channel}:{message_ids[0]}"


class SlackView:
    """A Slack reply view (streamed or edited) under the shared lifecycle's names."""

    def __init__(self, surface: SlackSurface, inner: ReplyView, identity: Identity) -> None:
        self.surface = surface
        self.inner = inner
        self.identity = identity

    @property
    def message_ids(self) -> list[str]:
        return self.inner.message_ids

    @property
    def shown(self) -> bool:
        return bool(self.inner.message_ids) or isinstance(self.inner, UpdateView)

    async def open(self) -> None:
        # Every reply being written shares Slack's chat.update budget.
        self.surface.place.pacer.active += 1
        await self.inner.open()

    async def wait(self, notice: str) -> None:
        await self.inner.wait(notice)

    async def feed(self, piece: str) -> None:
        await self.inner.feed(piece)

    async def finish(self, sources: Sequence[Hit]) -> None:
        block = sources_block(sources)
        await self.inner.finish([block] if block else [])

    async def abort(self, note: str) -> None:
        if self.shown:
            await self.inner.abort(note)
            return
        # A stream shows nothing until its first words: the note is a message of its own.
        surface = self.surface
        poster = surface.place.poster
        await poster.post(
            surface.channel, note, thread_ts=surface.thread_ts, identity=self.identity
        )

    async def close(self) -> None:
        self.surface.place.pacer.active -= 1
        if isinstance(self.inner, StreamView) and self.inner.unsupported:
            self.surface.place.streaming.on = False


@dataclass(frozen=True)
class RespondSurface:
    """A reply said in one go through a slash command's `respond` (only the asker sees it)."""

    respond: Callable[..., Awaitable[Any]]
    explicit: bool = True

    def view(self, persona: Persona) -> RespondView:
        return RespondView(self.respond)

    async def notice(self, text: str) -> None:
        await self.respond(text=escape(text))

    async def mark(self, mark: Mark) -> None:
        """A private answer has no message to react to."""

    def shown_key(self, message_ids: list[str]) -> str:
        return ""


class RespondView:
    """Collects the reply and responds with the whole of it at the end (replacing the place in
    line it showed while it waited, if any)."""

    def __init__(self, respond: Callable[..., Awaitable[Any]]) -> None:
        self.respond = respond
        self.text = ""
        self.message_ids: list[str] = []
        self.shown = False
        self._notices = 0

    async def open(self) -> None:
        """Nothing shows before the whole answer."""

    async def wait(self, notice: str) -> None:
        # A response_url takes RESPONSE_URL_USES responses: keep one for the answer.
        if self._notices < RESPONSE_URL_USES - 1:
            await self.respond(text=escape(notice), replace_original=self._notices > 0)
            self._notices += 1

    async def feed(self, piece: str) -> None:
        self.text += piece

    async def finish(self, sources: Sequence[Hit]) -> None:
        text = to_mrkdwn(self.text)
        block = sources_block(sources)
        blocks = {} if block is None else {"blocks": final_blocks(text, [block])}
        await self.respond(text=text, replace_original=self._notices > 0, **blocks)

    async def abort(self, note: str) -> None:
        await self.respond(text=escape(note), replace_original=self._notices > 0)

    async def close(self) -> None:
        """Nothing is held."""
