"""The one reply lifecycle every chat platform uses: admit, show, stream, finish, remember.

`Delivery.deliver(message, surface)` takes one message from admission to the stored id of the
platform message that shows its reply. The steps, top to bottom:
admit (refused: a short notice, a rate refusal said once per wait, an access refusal silent where
the bot was not addressed) -> a view for the persona snapshot that answers, opened while the
prompt is prepared (Discord: typing; Slack: a placeholder) -> start (a full queue or a failed
model: a notice where the reply would have been; while the model is busy with other replies,
"N questions ahead of yours" where the reply will show, kept up to date and replaced by its
first words) -> stream the pieces into the view -> the
sources (for personas with `citations: true`), or a note when the model failed half-way ->
cancelled at shutdown: a note saying so -> the platform message that shows the reply, stored
for follow-ups and reactions.

A platform provides a `Surface` (where this one reply goes) whose `ReplyView` shows the text;
both are small, so the same steps, and the same sentences (`bots.chat.notices`), hold on every
platform.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol

from bots.chat import notices
from bots.chat.model import Admission, ChatRefused, Incoming
from bots.chat.policy import NoticeThrottle
from bots.chat.reply import Reply
from bots.chat.service import ChatService
from bots.engine.base import EngineError
from bots.knowledge.model import Hit
from bots.persona.model import Persona

log = logging.getLogger(__name__)

Mark = Literal["busy", "failed"]
# A place in line stays on screen at least this long before a newer one replaces it.
PLACE_INTERVAL_S = 1.0


class ReplyView(Protocol):
    """Where one reply's text shows while and after it is generated."""

    @property
    def message_ids(self) -> list[str]:
        """The platform messages showing the reply so far, in order."""

    @property
    def shown(self) -> bool:
        """Whether anything of this reply is on screen (a placeholder counts)."""

    async def open(self) -> None:
        """Show that a reply is coming; runs while the prompt is prepared."""

    async def wait(self, notice: str) -> None:
        """Show where the question stands in line (`notice`) where the reply will show; the
        reply's first words, or a note, replace it, and `close` takes back one left over."""

    async def feed(self, piece: str) -> None:
        """Add generated text."""

    async def finish(self, sources: Sequence[Hit]) -> None:
        """Show the final text, with `sources` below it when there are any."""

    async def abort(self, note: str) -> None:
        """End with `note`: under the text shown so far, or alone where nothing was."""

    async def close(self) -> None:
        """Release what the view holds (typing, pacing); called once, whatever happened."""


class Surface(Protocol):
    """What a platform provides to show one reply to one message."""

    @property
    def explicit(self) -> bool:
        """Whether an access refusal is said. True where the user addressed the bot (a mention,
        a DM, a command) or where a notice is private (Slack's ephemeral messages); False in a
        Discord channel bound to a persona, where a notice would be public to everyone."""

    def view(self, persona: Persona) -> ReplyView:
        """A view showing `persona`'s reply (its name and avatar where the platform can)."""

    async def notice(self, text: str) -> None:
        """Tell the asker why there is no answer (privately where the platform allows)."""

    async def mark(self, mark: Mark) -> None:
        """Mark the asker's message for a busy or failed reply (Slack: a reaction), or not."""

    def shown_key(self, message_ids: list[str]) -> str:
        """The key under which the store finds the reply shown by these messages."""


class Delivery:
    """Runs the reply lifecycle for one adapter (its rate notices are throttled together).

    `place_interval_s` says how long to leave a place in line on screen before showing a newer
    one (the platform's edit pace: the queue can move faster than a platform allows edits).
    """

    def __init__(
        self,
        service: ChatService,
        *,
        place_interval_s: Callable[[], float] = lambda: PLACE_INTERVAL_S,
    ) -> None:
        self.service = service
        self.place_interval_s = place_interval_s
        self._rate_notices = NoticeThrottle()

    async def admit(self, incoming: Incoming) -> Admission:
        """Check a message before showing anything; raises ChatRefused (see `refused`)."""
        return await self.service.admit(incoming)

    async def refused(self, refused: ChatRefused, user_id: str, surface: Surface) -> None:
        """Say a refusal: a flood hears "too fast" once per wait; a bound channel's access
        refusal stays silent."""
        if refused.kind == "rate_limited":
            if not self._rate_notices.should_notify(user_id, refused.retry_after_s):
                return
        elif refused.kind == "no_access" and not surface.explicit:
            return
        await surface.notice(refused.user_message)

    async def deliver(self, message: Incoming | Admission, surface: Surface) -> Reply | None:
        """Answer one message on `surface`; the reply once it has ended, or None if refused."""
        if isinstance(message, Admission):
            admission = message
        else:
            try:
                admission = await self.service.admit(message)
            except ChatRefused as refused:
                await self.refused(refused, message.user_id, surface)
                return None
        view = surface.view(admission.persona)
        reply: Reply | None = None
        try:
            reply = await self._start(admission, surface, view)
            if reply is not None:
                await self._stream(reply, surface, view)
        except asyncio.CancelledError:
            # Only a shutdown cancels a reply that shows: say so where it stops.
            if view.shown:
                await view.abort(notices.INTERRUPTED)
            raise
        finally:
            try:
                if reply is not None and reply.turn_id is not None and view.message_ids:
                    await self.service.shown(reply.turn_id, surface.shown_key(view.message_ids))
            finally:
                await view.close()
        return reply

    async def _start(self, admission: Admission, surface: Surface, view: ReplyView) -> Reply | None:
        """Open the view while the prompt is prepared; a start that fails says why there."""
        opening = asyncio.ensure_future(view.open())
        line = PlaceInLine(view, opening, self.place_interval_s)
        try:
            reply = await self.service.start(admission, on_wait=line.moved)
        except (ChatRefused, EngineError) as exc:
            await opening
            await line.settle()
            if isinstance(exc, ChatRefused):
                note = exc.user_message
                if exc.kind == "busy":
                    await surface.mark("busy")
            else:
                log.error("the engine failed to start a reply: %s", exc)
                note = notices.FAILED
                await surface.mark("failed")
            await view.abort(note)
            return None
        except BaseException:
            opening.cancel()
            await line.settle()
            raise
        try:
            await opening
            await line.settle()
        except BaseException:
            await _discard(reply)
            raise
        return reply

    async def _stream(self, reply: Reply, surface: Surface, view: ReplyView) -> None:
        try:
            async for piece in reply:
                await view.feed(piece)
        except EngineError:
            log.exception("the engine failed mid-reply")
            await surface.mark("failed")
            await view.abort(notices.CUT_SHORT)
            return
        await view.finish(reply.cited if reply.persona.citations else ())


async def _discard(reply: Reply) -> None:
    """Stop a reply that will not be shown (its generator then frees the engine)."""
    async for _ in reply:
        break


class PlaceInLine:
    """Shows a waiting reply's newest place in line in its view, one update at a time.

    The engine says where the request stands each time the queue moves (`moved`, called from
    `ChatService.start`); the view shows the newest place once it is open, then leaves it for
    `interval_s()` before showing a newer one. `settle` stops it before the reply's first words,
    after an update under way has landed, so a late update never overwrites the reply.
    """

    def __init__(
        self, view: ReplyView, opened: Awaitable[None], interval_s: Callable[[], float]
    ) -> None:
        self.view = view
        self.opened = asyncio.ensure_future(opened)
        self.interval_s = interval_s
        self.ahead = 0
        self._moved = asyncio.Event()
        self._showing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def moved(self, ahead: int) -> None:
        """The request now waits for `ahead` replies to end."""
        self.ahead = ahead
        self._moved.set()
        if self._task is None:
            self._task = asyncio.create_task(self._show())

    async def _show(self) -> None:
        await asyncio.wait([self.opened])  # not cancelled with this task
        if self.opened.cancelled() or self.opened.exception() is not None:
            return
        while True:
            await self._moved.wait()
            self._moved.clear()
            async with self._showing:
                try:
                    await self.view.wait(notices.ahead(self.ahead))
                except Exception:  # a place in line is a courtesy: the reply goes on
                    log.warning("could not show a place in line", exc_info=True)
                    return
            await asyncio.sleep(self.interval_s())

    async def settle(self) -> None:
        """Stop showing places in line (an update under way lands first)."""
        task = self._task
        if task is None:
            return
        async with self._showing:
            task.cancel()
        await asyncio.wait([task])
