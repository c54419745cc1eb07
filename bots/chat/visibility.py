"""What of a persona's pinned documents and of a conversation's past a place may be given.

Retrieval already leaves out the chunks a place's readers may not see (`bots.knowledge.audience`);
these are the two other ways a restricted document could reach a prompt: pinned whole, or through
an earlier answer that quoted it (the conversation moved places, or the document became private
after it was answered).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import bots.chat.pinned as pinned
from bots.chat.model import Turn
from bots.knowledge.audience import Access, Reader, visible
from bots.knowledge.model import Hit
from bots.persona.model import Persona

# Who may see the document a persona's hit or stored source names ("<library>/<path>" or a path
# in the persona's folder): `KnowledgeBase.access`.
AccessOf = Callable[[str, str], Access]


def visible_pinned(persona: Persona, reader: Reader, access: AccessOf) -> tuple[Hit, ...]:
    """The persona's pinned documents that `reader` may see: a restricted one stays out of the
    prompt of a place that may not see it, like any chunk of it."""
    return tuple(
        hit
        for hit in pinned.as_hits(persona.pinned)
        if visible(access(persona.id, hit.path), reader)
    )


def visible_history(
    persona: Persona, turns: Sequence[Turn], reader: Reader, access: AccessOf
) -> list[Turn]:
    """The turns whose answers drew only on documents `reader` may see now: an exchange that used
    one it may not is left out with its question, so a restricted answer never feeds this one."""
    kept: list[Turn] = []
    for turn in turns:
        if turn.role == "assistant" and not all(
            visible(access(persona.id, source["path"]), reader)
            for source in turn.sources
            if "path" in source
        ):
            if kept and kept[-1].role == "user":
                kept.pop()
            continue
        kept.append(turn)
    return kept
