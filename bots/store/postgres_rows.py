"""The PostgreSQL store's rows as the chat service's records, and the queries kept out of
`bots.store.postgres` to keep it readable."""

from __future__ import annotations

import json
from typing import Any

from bots.chat.model import Feedback, Turn

TURN_COLUMNS = (
    "id, conversation_id, role, content, persona_id, user_id, status, sources, "
    "platform_message_id, created_at, persona_version, made_from"
)
# This store's secret `name`: made with the given random value the first time, read after.
SECRET_SQL = (
    "WITH made AS (INSERT INTO store_secrets (name, value) VALUES (%s, %s) "
    "ON CONFLICT (name) DO NOTHING RETURNING value) SELECT value FROM made "
    "UNION ALL SELECT value FROM store_secrets WHERE name=%s LIMIT 1"
)


def turn_of(row: dict[str, Any]) -> Turn:
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


def feedback_of(r: dict[str, Any]) -> Feedback:
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
