"""Which persona answers: a channel binding, else a persona named first, else the default."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from bots.persona.model import Persona

# "tutor: question", "tutor, question", "@tutor question" at the very start of a message.
NAMED = re.compile(r"^\s*@?(?P<name>[A-Za-z0-9][\w-]{0,63})\s*[:,]\s*(?P<rest>.*)$", re.DOTALL)

Platform = Literal["discord", "slack"]


@dataclass(frozen=True)
class Route:
    """The persona chosen and the message text left once its name is removed."""

    persona_id: str | None
    text: str
    reason: Literal["channel", "named", "default", "none"]


def route(
    personas: Sequence[Persona],
    text: str,
    *,
    platform: Platform | None = None,
    channel_id: str = "",
    default: str = "",
) -> Route:
    """Pick the persona for a message; `persona_id` None means no persona can answer."""
    if platform and channel_id:
        for persona in personas:
            channels = persona.discord_channels if platform == "discord" else persona.slack_channels
            if channel_id in channels:
                return Route(persona.id, _strip_name(text, persona), "channel")
    match = NAMED.match(text)
    if match:
        named = match.group("name").lower()
        for persona in personas:
            if named in (persona.id, persona.display_name.lower()):
                return Route(persona.id, match.group("rest").strip(), "named")
    chosen = default if any(p.id == default for p in personas) else ""
    if not chosen and personas:
        chosen = personas[0].id
    return Route(chosen or None, text.strip(), "default" if chosen else "none")


def _strip_name(text: str, persona: Persona) -> str:
    match = NAMED.match(text)
    if match and match.group("name").lower() in (persona.id, persona.display_name.lower()):
        return match.group("rest").strip()
    return text.strip()
