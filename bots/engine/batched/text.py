"""Tokens' bytes -> text to show: whole UTF-8 characters only, cut at the first stop string.

A token may hold part of a character (the rest comes with the next token), and the start of a
stop string may arrive before it is known to be one, so some text is held back until the next
token says what it was. Knows nothing of requests or sequences: one `TextStream` per reply.
"""

from __future__ import annotations

import codecs


class TextStream:
    """Text of one reply as its tokens arrive; `stopped` once a stop string was reached."""

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self._stops = stops
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self.stopped = False

    def push(self, data: bytes) -> str:
        """The text that can be shown after one more token's bytes ("" for none yet).

        At a stop string it is the text before it, and `stopped` becomes True: the stop string
        and anything after it are never shown.
        """
        stops = self._stops
        if not stops:  # the common case, per token: nothing to look for or hold back
            return self._decoder.decode(data)
        text = self._held + self._decoder.decode(data)
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            self.stopped = True
            return text[:cut]
        keep = _partial_stop_suffix(text, stops)
        if not keep:
            self._held = ""
            return text
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What was held back, at the end of the reply (an unfinished character as U+FFFD)."""
        tail = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return tail


def _partial_stop_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could begin a stop string (held back)."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best
