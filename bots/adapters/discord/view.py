"""One Discord reply on screen: typing while the prompt is prepared, then paced edits.

`DiscordSurface` is what the shared lifecycle (`bots.adapters.delivery`) needs of Discord for one
reply: where the persona shows (its own bot, its webhook, plain messages, an interaction's
response), how a notice is said, and where "typing..." shows. Its `DiscordView` streams the text
through the shared renderer, stops typing once the first words show, and ends with the sources
line or a note.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
import discord

from bots.adapters.delivery import Mark
from bots.adapters.discord.sinks import DiscordSink, defuse_mentions, sources_footer
from bots.adapters.render import StreamRenderer
from bots.knowledge.model import Hit
from bots.persona.model import Persona

log = logging.getLogger(__name__)

SinkMaker = Callable[[Persona], Awaitable[tuple[DiscordSink, int]]]


@dataclass(frozen=True)
class DiscordSurface:
    """Where one reply goes: `sink` once the persona is known (a sink and its character limit),
    `notify` for a short notice, `typing_in` for the typing indicator, `on_visible` once the
    first words show, `remember_parts` for the parts of a split reply."""

    explicit: bool
    sink: SinkMaker
    notify: Callable[[str], Awaitable[None]]
    typing_in: discord.abc.Messageable | None
    edit_interval_s: float
    remember_parts: Callable[[list[str]], None]
    on_visible: Callable[[], object] = lambda: None

    def view(self, persona: Persona) -> DiscordView:
        return DiscordView(self, persona)

    async def notice(self, text: str) -> None:
        await self.notify(text)

    async def mark(self, mark: Mark) -> None:
        """Discord has no mark for a busy or failed reply: the notice says it."""

    def shown_key(self, message_ids: list[str]) -> str:
        self.remember_parts(message_ids)
        return message_ids[0]


class DiscordView:
    """A reply as progressively edited messages, "typing..." until its first words show."""

    def __init__(self, surface: DiscordSurface, persona: Persona) -> None:
        self.surface = surface
        self.persona = persona
        self.renderer: StreamRenderer | None = None
        self._sink: DiscordSink | None = None
        self._typing = contextlib.AsyncExitStack()

    @property
    def message_ids(self) -> list[str]:
        return self.renderer.message_ids if self.renderer is not None else []

    @property
    def shown(self) -> bool:
        """Whether the reply shows (a place in line alone does not count: see `close`)."""
        return self.renderer is not None and bool(self.message_ids) and not self.renderer.holding

    async def open(self) -> None:
        channel = self.surface.typing_in
        if channel is not None:
            try:
                await self._typing.enter_async_context(channel.typing())
            except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
                log.debug("typing indicator failed: %s", exc)
        sink, limit = await self.surface.sink(self.persona)
        self._sink = sink
        self.renderer = StreamRenderer(
            sink, limit, self.surface.edit_interval_s, transform=defuse_mentions
        )

    async def wait(self, notice: str) -> None:
        assert self.renderer is not None, "open() first"
        # The notice says what "typing..." would: stop it.
        await self._typing.aclose()
        await self.renderer.hold(notice)

    async def feed(self, piece: str) -> None:
        assert self.renderer is not None, "open() first"
        visible = self.shown
        await self.renderer.feed(piece)
        if self.shown and not visible:
            # Shown now: stop typing; an edit or deletion no longer cancels the reply.
            await self._typing.aclose()
            self.surface.on_visible()

    async def finish(self, sources: Sequence[Hit]) -> None:
        assert self.renderer is not None, "open() first"
        await self.renderer.finish(sources_footer(tuple(sources)))

    async def abort(self, note: str) -> None:
        if self.renderer is not None and self.renderer.message_ids:
            await self.renderer.finish(note)  # in place of the reply, or of its place in line
        else:
            await self.surface.notify(note)

    async def close(self) -> None:
        await self._typing.aclose()
        renderer, sink = self.renderer, self._sink
        if renderer is not None and sink is not None and renderer.holding and renderer.message_ids:
            # A place in line that no reply or note replaced (the question was deleted or
            # edited while it waited, or the bot stops): take it back.
            try:
                await sink.delete(renderer.message_ids[0])
            except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
                log.info("could not take back a place-in-line notice: %s", exc)
            renderer.message_ids.clear()
