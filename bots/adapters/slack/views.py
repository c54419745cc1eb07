"""Block Kit for the Slack adapter: the App Home tab, `/persona` answers, the sources line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bots.adapters.slack.format import escape
from bots.knowledge.model import Hit
from bots.persona.model import Persona

Block = dict[str, Any]

# Slack allows 100 blocks in a Home tab and 3,000 characters in a section's text.
MAX_VIEW_BLOCKS = 100
SECTION_CHARS = 3000
DESCRIPTION_CHARS = 600
MAX_STARTERS = 3
# A context block holds at most 10 elements; sources are joined into one to stay compact.
MAX_SOURCES = 5


def plain(text: str, limit: int) -> str:
    """Escaped text cut to `limit` characters."""
    text = " ".join(text.split())
    return escape(text if len(text) <= limit else text[: limit - 1] + "…")


def section(text: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:SECTION_CHARS]}}


def sources_block(sources: Sequence[Hit]) -> Block | None:
    """One compact context line naming the documents a reply drew on, or None without any."""
    names: list[str] = []
    for hit in sources:
        name = hit.title or hit.path
        label = f"{name} › {hit.heading}" if hit.heading and hit.heading != name else name
        if label not in names:
            names.append(label)
    if not names:
        return None
    shown = " · ".join(plain(n, 120) for n in names[:MAX_SOURCES])
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": f":books: {shown}"}]}


def persona_summary(persona: Persona) -> str:
    """`*Name* (`id`): description` on one line."""
    line = f"*{plain(persona.display_name, 80)}* (`{persona.id}`)"
    if persona.description:
        line += f": {plain(persona.description, DESCRIPTION_CHARS)}"
    return line


def persona_list(personas: Sequence[Persona]) -> str:
    """The reply to `/persona list`."""
    if not personas:
        return "No personas are loaded. Add a folder under `personas/` with a `persona.md`."
    lines = [persona_summary(p) for p in personas]
    heading = "Personas you can ask (`/ask NAME question` or `@bots NAME: question`):"
    return "\n".join([heading, *lines])


def persona_info(persona: Persona) -> str:
    """The reply to `/persona info NAME`."""
    lines = [persona_summary(persona)]
    if persona.knowledge:
        lines.append("Knowledge: " + ", ".join(f"`{plain(k, 60)}`" for k in persona.knowledge))
    if persona.citations:
        lines.append("Names its sources.")
    if persona.slack_channels:
        channels = ", ".join(f"<#{escape(c)}>" for c in persona.slack_channels)
        lines.append(f"Answers every message in: {channels}")
    if persona.access.users:
        lines.append("Only for some users.")
    for starter in persona.starters[:MAX_STARTERS]:
        lines.append(f"• _{plain(starter, 200)}_")
    return "\n".join(lines)


def home_view(personas: Sequence[Persona]) -> dict[str, Any]:
    """The App Home tab: every persona with its description and conversation starters."""
    blocks: list[Block] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Personas"}},
        section(
            "Mention me with a persona's name (`@bots NAME: question`), message me here, "
            "or use `/ask NAME question`."
        ),
    ]
    for persona in personas:
        persona_blocks: list[Block] = [{"type": "divider"}, section(persona_summary(persona))]
        starters = [f"“{plain(s, 150)}”" for s in persona.starters[:MAX_STARTERS]]
        if starters:
            try_line = {"type": "mrkdwn", "text": "Try: " + "  ".join(starters)}
            persona_blocks.append({"type": "context", "elements": [try_line]})
        if len(blocks) + len(persona_blocks) > MAX_VIEW_BLOCKS - 1:
            more = f"…and more ({len(personas)} personas in all): `/persona list` shows them."
            blocks.append(section(more))
            break
        blocks.extend(persona_blocks)
    if not personas:
        blocks.append(section("No personas are loaded yet."))
    return {"type": "home", "blocks": blocks}
