"""A reply being generated, what its sources look like in public, and its record for metrics."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from bots.chat.grounding import Gate, GateReport
from bots.chat.notices import DECLINE
from bots.chat.prompt import BuiltPrompt
from bots.engine.base import Piece, Usage
from bots.knowledge.model import Hit
from bots.persona.model import Persona

FinishReason = Literal["stop", "length", "cancelled", "error", "declined"]
ReplyStatus = Literal["complete", "interrupted"]


@dataclass
class Reply:
    """A reply being generated: iterate for text pieces; afterwards `text`, `usage` are final.

    `on_end` runs once when the iteration ends, however it ends (stores the turn, counts it).
    With a `gate` (strict personas) the pieces are what the gate lets through, a sentence at a
    time: `text` is what was shown, `generated` what the model wrote, `grounding` what the gate
    did (see `bots.chat.grounding`).
    """

    persona: Persona
    sources: tuple[Hit, ...]
    prompt: BuiltPrompt | None
    conversation_id: int | None
    turn_id: int | None
    _pieces: AsyncIterator[Piece] | None
    _on_end: Callable[[Reply, ReplyStatus], Awaitable[None]]
    platform: str = ""
    started: float = field(default_factory=time.perf_counter)
    gate: Gate | None = None
    text: str = ""
    generated: str = ""
    usage: Usage | None = None
    finish_reason: FinishReason | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._run()

    async def _run(self) -> AsyncIterator[str]:
        if self._pieces is None:
            self.finish_reason = "declined"
            self.text = DECLINE
            await self._on_end(self, "complete")
            yield DECLINE
            return
        status: ReplyStatus = "interrupted"
        try:
            async for piece in self._pieces:
                if piece.text:
                    self.generated += piece.text
                    shown = self.gate.feed(piece.text) if self.gate else piece.text
                    if shown:
                        self.text += shown
                        yield shown
                if piece.finish_reason is not None:
                    self.finish_reason = piece.finish_reason
                    self.usage = piece.usage
            status = "complete" if self.finish_reason in ("stop", "length") else "interrupted"
            if self.gate is not None and status == "complete":
                # What the gate still holds was never shown: checked now, or replaced.
                rest = self.gate.finish()
                if rest:
                    self.text += rest
                    yield rest
        except BaseException:
            self.finish_reason = self.finish_reason or "error"
            raise
        finally:
            if self.finish_reason is None:
                self.finish_reason = "cancelled"
            await self._pieces.aclose()  # type: ignore[attr-defined]
            await self._on_end(self, status)

    @property
    def grounding(self) -> GateReport | None:
        """What the grounding gate did (strict personas with documents), else None."""
        return self.gate.report if self.gate is not None else None

    @property
    def cited(self) -> tuple[Hit, ...]:
        """The sources to show: none when the gate declined (nothing of them was used)."""
        report = self.grounding
        return () if report is not None and report.action == "declined" else self.sources

    def source_dicts(self) -> list[dict[str, Any]]:
        """Sources for display and the store: one entry per document, with its best chunk's
        score, then the pinned documents (`pinned`: they were in the prompt whatever was
        asked); `quoted` marks the one the gate quoted instead of the model's answer."""
        seen: dict[str, dict[str, Any]] = {}
        quoted = self.grounding.quoted if self.grounding else ""
        declined = self.grounding is not None and self.grounding.action == "declined"
        pinned = self.prompt.pinned if self.prompt is not None and not declined else ()
        for hit in (*self.cited, *pinned):
            if hit.path not in seen:
                seen[hit.path] = source_dict(hit)
                if hit in pinned:
                    seen[hit.path]["pinned"] = True
                if hit.path == quoted:
                    seen[hit.path]["quoted"] = True
        return list(seen.values())


def source_dict(hit: Hit) -> dict[str, Any]:
    """The public shape of a source: path, title, score (plus heading)."""
    return {
        "path": hit.path,
        "title": hit.title,
        "heading": hit.heading,
        "score": round(hit.score, 4),
    }


@dataclass(frozen=True)
class ReplyRecord:
    """What logs and metrics learn of a finished or refused reply: figures, never the text."""

    persona_id: str
    platform: str
    outcome: str  # stop, length, cancelled, error, declined, busy, rate_limited
    usage: Usage
    duration_ms: float
    gate: str = ""  # the grounding gate's action (passed, trimmed, quoted, declined); "" if none
    unsupported: int = 0  # claims the gate found in no document
