"""The store's replies of one persona as exchanges: each with the prompt it was made from.

An exchange is one assistant reply with the question it answered, the history its prompt carried
and the documents it was given (`bots.chat.provenance`), its feedback, and, when it may not be
exported, why. Replies stored before provenance was recorded have no documents' text: their
history is rebuilt from the turns before them, and they are used only without sources.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bots.chat.facts import HISTORY_LIMIT
from bots.chat.model import Turn
from bots.chat.provenance import hit_of, reader_of
from bots.engine.base import ChatMessage
from bots.knowledge.audience import EVERYONE, Access, visible
from bots.knowledge.model import Hit
from bots.store.base import ConversationStore

AccessOf = Callable[[str], Access]  # who may see a document of the persona, by its path

DECLINED = "declined without the model (a fixed sentence, nothing to learn)"
UNFINISHED = "interrupted or never finished"
NO_QUESTION = "no question stored before it"
LEGACY = "stored before sources were recorded (export --without-sources to use it)"
HISTORY_GONE = "a turn of its history is no longer stored"
HISTORY_RESTRICTED = "its history holds an answer from a restricted document"


@dataclass(frozen=True)
class Exchange:
    """One stored reply and what it was made from."""

    turn: Turn
    question: Turn
    platform: str
    history: tuple[ChatMessage, ...]  # what the prompt carried before the question
    documents: tuple[Hit, ...]  # pinned first, then the chunks, as the prompt quoted them
    rating: int  # the sum of its thumbs (+1 / -1): > 0 up, < 0 down, 0 unrated
    excluded: str = ""  # why it is not exported; "" when it is
    system: str = ""  # the system message as sent; "" when not recorded (older replies)


async def exchanges(
    store: ConversationStore,
    persona_id: str,
    access: AccessOf,
    *,
    platforms: Sequence[str] = (),
    since: float = 0.0,
    with_sources: bool = True,
) -> list[Exchange]:
    """The persona's replies on `platforms` (all when empty) stored at or after `since`."""
    ratings: dict[int, int] = {}
    for feedback in await store.feedback(persona_id):
        ratings[feedback.turn_id] = ratings.get(feedback.turn_id, 0) + feedback.value
    found: list[Exchange] = []
    for conversation_id, platform, _ in await store.conversations():
        if platforms and platform not in platforms:
            continue
        turns = await store.turns(conversation_id)
        mine = [
            t
            for t in turns
            if t.role == "assistant" and t.persona_id == persona_id and t.created_at >= since
        ]
        if not mine:
            continue
        restricted = {t.id: _restricted(t, access) for t in turns if t.role == "assistant"}
        for turn in mine:
            rating = ratings.get(turn.id, 0)
            found.append(_exchange(turn, turns, restricted, rating, platform, with_sources))
    return found


def _exchange(
    turn: Turn,
    turns: Sequence[Turn],
    restricted: dict[int, str],
    rating: int,
    platform: str,
    with_sources: bool,
) -> Exchange:
    before = [t for t in turns if t.id < turn.id]
    asked = [t for t in before if t.role == "user"]
    if not asked:
        return Exchange(turn, turn, platform, (), (), rating, NO_QUESTION)
    question = asked[-1]
    made = turn.made_from
    history, documents, why = _made_from(turn, before, question, restricted, with_sources)
    if turn.status != "complete":
        why = UNFINISHED
    elif made.get("declined"):
        why = DECLINED
    elif restricted.get(turn.id):
        why = restricted[turn.id]
    system = str(made.get("system", ""))
    return Exchange(turn, question, platform, history, documents, rating, why, system)


def _made_from(
    turn: Turn,
    before: Sequence[Turn],
    question: Turn,
    restricted: dict[int, str],
    with_sources: bool,
) -> tuple[tuple[ChatMessage, ...], tuple[Hit, ...], str]:
    """The history and documents of the reply's prompt, and a reason it cannot be rebuilt."""
    made = turn.made_from
    if not made:
        earlier = [t for t in before if t.id < question.id and t.status == "complete"]
        earlier = earlier[-HISTORY_LIMIT:]
        why = LEGACY if with_sources and turn.sources else ""
        if any(restricted.get(t.id) for t in earlier):
            why = why or HISTORY_RESTRICTED
        return _messages(earlier), (), why
    documents = tuple(hit_of(d) for d in (*made.get("pinned", ()), *made.get("chunks", ())))
    history = made.get("history", {})
    if "messages" in history:
        return tuple(_message(m) for m in history["messages"]), documents, ""
    by_id = {t.id: t for t in before}
    ids = [int(i) for i in history.get("turns", ())]
    if any(i not in by_id for i in ids):
        return (), documents, HISTORY_GONE
    if any(restricted.get(i) for i in ids):
        return (), documents, HISTORY_RESTRICTED
    return _messages([by_id[i] for i in ids]), documents, ""


def _restricted(turn: Turn, access: AccessOf) -> str:
    """Why a reply drew on a document that must not be exported, or "".

    A document the place's readers may not see now is one reason; one restricted to some
    readers at all is the other: a tuned model answers in every place, public ones included.
    """
    made = turn.made_from
    reader = reader_of(made["reader"]) if "reader" in made else None  # None: not recorded
    paths = [str(s["path"]) for s in turn.sources if "path" in s]
    for key in ("pinned", "chunks"):
        paths += [str(d["path"]) for d in made.get(key, ())]
    for path in dict.fromkeys(paths):
        rules = access(path)
        if reader is not None and not visible(rules, reader):
            return f"drew on {path}, which the audience rules no longer allow where it was answered"
        if not visible(rules, EVERYONE):
            return f"drew on {path}, restricted to some readers (a tuned model answers everywhere)"
    return ""


def _messages(turns: Sequence[Turn]) -> tuple[ChatMessage, ...]:
    return tuple(ChatMessage(t.role, t.content) for t in turns)  # type: ignore[arg-type]


def _message(record: dict[str, Any]) -> ChatMessage:
    return ChatMessage(record["role"], str(record["content"]))


def reason_kind(reason: str) -> str:
    """A reason without the document's path, for counting ("drew on a restricted document")."""
    return reason.split(",", 1)[1].strip() if reason.startswith("drew on ") else reason
