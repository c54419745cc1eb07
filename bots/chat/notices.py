"""Every sentence a user sees when there is no answer (or no whole one, or none yet), for every
platform.

One event reads the same in Discord, Slack, the HTTP API, the workbench and the terminal; a
platform only chooses where a notice shows (a reply, a private message, a note under a cut
reply) and how it is styled.
"""

from __future__ import annotations

import math

from bots.persona.model import Persona

DECLINE = "I don't know: my documents don't cover that."
SHUTTING_DOWN = "I'm restarting right now; please ask again in a minute."
FAILED = "Sorry, something went wrong while answering. Please try again."
# Notes under a reply that was shown in part.
CUT_SHORT = "(reply cut short by an error; please try again)"
INTERRUPTED = "(reply interrupted: the bot is restarting)"
NO_PERSONAS = "No persona is available right now."
NOT_HERE = "I don't answer in this channel."
NO_SUCH_PERSONA = "That persona doesn't exist: try /persona list."
NO_MEMORY = "I can't reach my conversation store right now; please ask again in a moment."
THREAD_BUSY = "I'm still answering the last message here; please ask again in a moment."


def busy(retry_after_s: float) -> str:
    """The model's queue is full."""
    return f"I'm busy with other questions; please ask again in {_seconds(retry_after_s)}."


def ahead(count: int) -> str:
    """Where a question stands while the model is busy: the replies that must end first."""
    questions = "question" if count == 1 else "questions"
    return f"{count} {questions} ahead of yours; your answer will show here."


def too_fast(retry_after_s: float) -> str:
    """A user's per-minute budget is spent."""
    return f"You're sending messages too fast; try again in {_seconds(retry_after_s)}."


def no_access(persona: Persona) -> str:
    """The persona's `access` lists do not name the user or one of their roles."""
    return f"Sorry, you don't have access to {persona.display_name}."


def unknown_persona(persona_id: str, others: list[str]) -> str:
    """A persona id that names no loaded persona (with the ones that exist)."""
    return f"That persona doesn't exist: {persona_id!r} (have: {', '.join(others) or 'none'})."


def greeting(persona: Persona) -> str:
    """What a persona says to a mention with no question."""
    return persona.greeting or f"Hi! I'm {persona.display_name}. Ask me anything."


def _seconds(wait_s: float) -> str:
    return f"{max(1, math.ceil(wait_s))}s"


def documents_say(source: str, passage: str) -> str:
    """What a strict persona shows instead of an answer it could not ground: the documents' own
    words, quoted with their source."""
    return f'From {source}: "{passage}"'
