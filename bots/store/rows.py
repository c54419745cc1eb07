"""A row of either back end (a psycopg dict row, an sqlite3.Row) as the chat service's records."""

from __future__ import annotations

import json
from typing import Any, Protocol

from bots.chat.model import Feedback, Turn


class Row(Protocol):
    """What both drivers' rows offer: a column's value by name."""

    def __getitem__(self, key: str) -> Any: ...


TURN_COLUMNS = (
    "id, conversation_id, role, content, persona_id, user_id, status, sources, "
    "platform_message_id, created_at, persona_version, made_from"
)


def turn_of(row: Row) -> Turn:
    """A `turns` row (selected as TURN_COLUMNS) as a Turn."""
    return Turn(
        id=int(row["id"]),
        conversation_id=int(row["conversation_id"]),
        role=row["role"],
        content=row["content"],
        persona_id=row["persona_id"],
        user_id=row["user_id"],
        status=row["status"],
        sources=tuple(json.loads(row["sources"])),
        platform_message_id=row["platform_message_id"],
        created_at=float(row["created_at"]),
        persona_version=row["persona_version"],
        made_from=json.loads(row["made_from"]),
    )


def feedback_of(r: Row) -> Feedback:
    """A row of the feedback query as a Feedback."""
    return Feedback(
        turn_id=r["turn_id"],
        persona_id=r["persona_id"],
        platform=r["platform"],
        user_id=r["user_id"],
        value=r["value"],
        created_at=r["created_at"],
        question=r["question"] or "",
        answer=r["answer"],
        sources=tuple(json.loads(r["sources"])),
    )
