"""What a reply was made from, as the store records it: enough to rebuild the prompt the model saw.

Recorded with each assistant turn (next to the persona's content hash) and read by `bots export`:
the system message as sent (the persona's instructions of that version); the retrieved chunks
and the pinned documents that went into the prompt, with their text (a document edited or
deleted since still rebuilds the old prompt); which earlier turns the prompt carried (their ids,
or their text when the history was read from the platform and not stored); and who could read
the place (the audience the documents were chosen for).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bots.chat.model import Incoming
from bots.chat.prompt import BuiltPrompt
from bots.knowledge.audience import Reader
from bots.knowledge.model import Hit

VERSION = 1  # of this record's shape


def made_from(
    incoming: Incoming, prompt: BuiltPrompt | None, history_ids: Sequence[int]
) -> dict[str, Any]:
    """The record of one reply: `prompt` None when it declined without the model.

    `history_ids` are the stored turns the prompt's history was chosen from, oldest first (empty
    when the history came from the platform instead: then the messages themselves are kept).
    """
    record: dict[str, Any] = {"version": VERSION, "reader": reader_dict(incoming.reader)}
    if prompt is None:
        return {**record, "declined": True}
    kept = prompt.history_turns
    history: dict[str, Any]
    if history_ids:
        history = {"turns": list(history_ids[len(history_ids) - kept :]) if kept else []}
    else:
        shown = prompt.messages[1 : 1 + kept]
        history = {"messages": [{"role": m.role, "content": m.content} for m in shown]}
    return {
        **record,
        "system": prompt.messages[0].content,
        "chunks": [hit_dict(hit) for hit in prompt.sources],
        "pinned": [hit_dict(hit) for hit in prompt.pinned],
        "history": history,
    }


def hit_dict(hit: Hit) -> dict[str, Any]:
    """A chunk or pinned document with everything the prompt builder quotes of it."""
    return {
        "path": hit.path,
        "title": hit.title,
        "heading": hit.heading,
        "text": hit.text,
        "score": round(hit.score, 4),
        "library": hit.library,
    }


def hit_of(record: dict[str, Any]) -> Hit:
    """A recorded chunk back as the Hit the prompt builder quotes."""
    return Hit(
        path=str(record["path"]),
        title=str(record.get("title", "")),
        heading=str(record.get("heading", "")),
        text=str(record["text"]),
        score=float(record.get("score", 0.0)),
        library=record.get("library"),
    )


def reader_dict(reader: Reader) -> dict[str, Any]:
    """Who could read the place, as recorded."""
    users = None if reader.users is None else sorted(reader.users)
    return {
        "platform": reader.platform,
        "users": users,
        "roles": sorted(reader.roles),
        "private": reader.private,
        "everything": reader.everything,
    }


def reader_of(record: dict[str, Any]) -> Reader:
    """A recorded reader back as a Reader (the audience rules' own type)."""
    users = record.get("users")
    return Reader(
        str(record.get("platform", "")),
        None if users is None else frozenset(users),
        frozenset(record.get("roles", ())),
        private=bool(record.get("private", False)),
        everything=bool(record.get("everything", False)),
    )
