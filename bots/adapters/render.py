"""One renderer for every chat platform: split long replies, pace progressive edits.

Discord and Slack differ only in limits (characters per message, edits per second) and in how a
message is posted or edited; both drive a `StreamRenderer` over their own `MessageSink`. Slack's
streaming API appends text instead of editing it, so its view cuts with the same `cut_point` and
carries code fences with the same `open_fence` and `FENCE_ROOM`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

FENCE = re.compile(r"^(\s*)(```+|~~~+)(.*)$")
CURSOR = " ▌"
# Room kept at the end of a part for closing a code block the cut lands in ("\n```").
FENCE_ROOM = 4


class MessageSink(Protocol):
    """How a platform shows a reply: post a new message, edit one it posted."""

    async def send(self, text: str) -> str:
        """Post `text`; return the platform's message id."""

    async def edit(self, message_id: str, text: str) -> None:
        """Replace the text of a message posted by `send`."""


def split_message(text: str, limit: int) -> list[str]:
    """Split `text` into parts of at most `limit` characters.

    Prefers paragraph, then line, then word boundaries; never cuts a word unless one word is
    longer than the limit; a code block cut in two is closed at the end of one part and reopened
    (with its language) at the start of the next, so each part renders on its own.
    """
    if limit < 16:
        raise ValueError("limit too small to split sensibly")
    parts: list[str] = []
    rest = text
    reopen = ""
    while rest:
        rest = reopen + rest
        if len(rest) <= limit:
            parts.append(rest)
            break
        cut = cut_point(rest, limit - FENCE_ROOM)
        head, rest = rest[:cut].rstrip(), rest[cut:].lstrip(" \n") if cut < len(rest) else ""
        fence = open_fence(head)
        if fence is not None:
            head += "\n" + fence[0]
            reopen = fence[0] + fence[1] + "\n"
        else:
            reopen = ""
        parts.append(head)
    return [p for p in parts if p.strip()]


def cut_point(text: str, limit: int) -> int:
    """Where to end a part of at most `limit` characters of `text`: after a paragraph, else a
    line, else a word, unless that would leave the part under a third of the limit."""
    window = text[:limit]
    for separator in ("\n\n", "\n", " "):
        at = window.rfind(separator)
        if at > limit // 3:
            return at + len(separator)
    return limit


def open_fence(text: str) -> tuple[str, str] | None:
    """The (fence, language) of a code block left open at the end of `text`, if any."""
    open_fence: tuple[str, str] | None = None
    for line in text.split("\n"):
        match = FENCE.match(line)
        if not match:
            continue
        if open_fence is None:
            open_fence = (match.group(2), match.group(3).strip())
        elif match.group(2).startswith(open_fence[0][:3]) and not match.group(3).strip():
            open_fence = None
    return open_fence


@dataclass
class StreamRenderer:
    """Shows a growing reply as progressively edited messages, within a platform's limits.

    Call `feed` with each piece and `finish` once at the end; edits are sent at most once every
    `interval_s`, and the text moves on to a new message when it outgrows `limit` characters.
    """

    sink: MessageSink
    limit: int
    interval_s: float
    clock: Callable[[], float] = time.monotonic
    # Applied to the whole text before splitting (e.g. defusing mentions), so limits still hold.
    transform: Callable[[str], str] = str
    text: str = ""
    message_ids: list[str] = field(default_factory=list)
    # The first message shows a notice (a place in line) that the reply's text will replace.
    holding: bool = False
    _shown: list[str] = field(default_factory=list)
    _last_flush: float = 0.0

    async def hold(self, notice: str) -> None:
        """Show `notice` in the first message until the reply's own text replaces it."""
        if self.text.strip() or (self.message_ids and not self.holding):
            return
        self.holding = True
        self._last_flush = self.clock()
        if not self.message_ids:
            self.message_ids.append(await self.sink.send(notice))
            self._shown.append(notice)
        elif self._shown[0] != notice:
            await self.sink.edit(self.message_ids[0], notice)
            self._shown[0] = notice

    async def feed(self, piece: str) -> None:
        self.text += piece
        if self.text.strip() and self.clock() - self._last_flush >= self.interval_s:
            await self._flush(cursor=True)

    async def finish(self, footer: str = "") -> list[str]:
        """Show the final text (with an optional footer); returns the message ids."""
        if footer:
            self.text = self.text.rstrip() + "\n\n" + footer if self.text.strip() else footer
        if not self.text.strip():
            self.text = "…"
        await self._flush(cursor=False)
        return self.message_ids

    async def _flush(self, *, cursor: bool) -> None:
        self._last_flush = self.clock()
        self.holding = False
        parts = split_message(self.transform(self.text), self.limit - len(CURSOR))
        if cursor and parts:
            parts[-1] += CURSOR
        for i, part in enumerate(parts):
            if i < len(self.message_ids):
                if self._shown[i] != part:
                    await self.sink.edit(self.message_ids[i], part)
                    self._shown[i] = part
            else:
                self.message_ids.append(await self.sink.send(part))
                self._shown.append(part)
