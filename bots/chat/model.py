"""What crosses the chat service's border: a message in, a refusal, and the stored records."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from bots.engine.base import ChatMessage
from bots.knowledge.audience import EVERYONE, Reader
from bots.persona.model import Persona

TurnStatus = Literal["complete", "pending", "interrupted"]
RefusalKind = Literal[
    "unknown_persona", "no_access", "rate_limited", "busy", "shutting_down", "unavailable"
]


@dataclass(frozen=True)
class Incoming:
    """A message from any platform, reduced to what choosing and answering needs."""

    platform: str
    place: str
    user_id: str
    text: str
    persona_id: str
    roles: tuple[str, ...] = ()
    message_id: str = ""
    remember: bool = True
    history: tuple[ChatMessage, ...] = ()
    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    fresh: bool = False  # evaluate without cached prefixes (exactly repeatable, for evals)
    # Who can read the place the answer goes to: what documents it may use (see `audience`).
    # The default sees public documents only; each adapter says who reads its places.
    reader: Reader = EVERYONE


@dataclass(frozen=True)
class Admission:
    """A message the service has let through, with the persona snapshot that will answer it.

    A caller that must refuse before it shows anything (a slash command's private refusal)
    admits first and hands this to `start`, which then does not check again: one check, one
    rate-limit charge, one snapshot for the whole reply.
    """

    incoming: Incoming
    persona: Persona

    def at(self, place: str, *, message_id: str = "", reader: Reader | None = None) -> Admission:
        """The same admitted message, answered in another place (a thread opened for it, or
        privately: then `reader` says who reads it there)."""
        moved = dataclasses.replace(
            self.incoming,
            place=place,
            message_id=message_id,
            reader=self.incoming.reader if reader is None else reader,
        )
        return Admission(moved, self.persona)

    def with_history(self, history: tuple[ChatMessage, ...]) -> Admission:
        """The same admitted message, with earlier messages read from the platform."""
        return Admission(dataclasses.replace(self.incoming, history=history), self.persona)


class ChatRefused(Exception):
    """The message will not be answered; `user_message` is short and safe to show."""

    def __init__(
        self,
        user_message: str,
        *,
        kind: RefusalKind,
        status: int = 400,
        retry_after_s: float = 0.0,
    ) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.kind = kind
        self.status = status
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Turn:
    """One stored message of a conversation."""

    id: int
    conversation_id: int
    role: str
    content: str
    persona_id: str
    user_id: str
    status: TurnStatus
    sources: tuple[dict[str, Any], ...]
    platform_message_id: str
    created_at: float
    # What an assistant reply was made from, recorded since schema version 3 (empty before):
    # the persona's content hash, and `bots.chat.provenance.made_from`'s record of the prompt.
    persona_version: str = ""
    made_from: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Feedback:
    """A thumbs up (+1) or down (-1) on a bot reply, with the exchange it judged."""

    turn_id: int
    persona_id: str
    platform: str
    user_id: str
    value: int
    created_at: float
    question: str
    answer: str
    sources: tuple[dict[str, Any], ...]
