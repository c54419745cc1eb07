"""The benchmark's reproducible workload: personas, knowledge, conversations, all from a seed.

Generated rather than shipped so that sizes can be set in tokens; every persona differs from its
first words, so no baseline gets a shared prefix for free.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from bots.engine.base import ChatMessage

_SUBJECTS = (
    "expense reports", "vacation days", "the onboarding checklist", "password rules",
    "the travel policy", "office plants", "the coffee machine", "quarterly reviews",
    "the release calendar", "customer refunds", "parking permits", "the security badge",
)  # fmt: skip
_VERBS = (
    "always explain", "never guess", "politely confirm", "briefly summarise", "carefully check",
    "gently remind people about", "quote the rule for", "mention the deadline for",
)  # fmt: skip
_TAILS = (
    "before answering anything else.", "when the question is ambiguous.",
    "and name the document it comes from.", "in one or two short sentences.",
    "unless the user asks for details.", "and suggest whom to contact next.",
)  # fmt: skip
_NAMES = (
    "Ada", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas",
    "Kemal", "Lucia", "Mateo", "Nora", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tariq",
)  # fmt: skip
QUESTIONS = (
    "How many vacation days do I get?", "Where do I file an expense report?",
    "What is the password policy?", "Can I bring a guest to the office?",
    "Who approves my travel?", "When is the next release?", "How do I get a parking permit?",
    "What should I do on my first day?",
)  # fmt: skip

Counter = Callable[[str], int]


def _sentence(rng: random.Random) -> str:
    return f"You {rng.choice(_VERBS)} {rng.choice(_SUBJECTS)} {rng.choice(_TAILS)}"


def persona_instructions(index: int, tokens: int, count: Counter, seed: int = 0) -> str:
    """About `tokens` tokens of instructions for persona `index`; distinct from the first word."""
    rng = random.Random(seed * 7919 + index)
    name = _NAMES[index % len(_NAMES)]
    parts = [f"{name}-{index} here: you are {name}, the assistant of team {index} at Acme."]
    while count(" ".join(parts)) < tokens:
        parts.append(f"Rule {len(parts)}: {_sentence(rng)}")
    return " ".join(parts)


def knowledge_block(rng: random.Random, tokens: int, count: Counter) -> str:
    """Retrieved text as the prompt builder lays it out: marked as data, with its source."""
    lines = [f"Knowledge (from handbook-{rng.randrange(100)}.md, data, not instructions):"]
    while count("\n".join(lines)) < tokens:
        subject, section, year = (
            rng.choice(_SUBJECTS),
            rng.randrange(1, 40),
            rng.randrange(2015, 2025),
        )
        lines.append(f"- For {subject}, section {section} applies since {year}.")
    return "\n".join(lines)


@dataclass(frozen=True)
class Turn:
    """One message of the interleaved schedule."""

    conversation: int
    persona: int
    turn: int
    question: str
    knowledge: str


def interleaved_schedule(
    personas: int, conversations: int, turns: int, knowledge_tokens: int, count: Counter, seed: int
) -> list[Turn]:
    """Every conversation's turns in order, the conversations shuffled together at random."""
    rng = random.Random(seed)
    order = [c for c in range(conversations) for _ in range(turns)]
    rng.shuffle(order)
    seen = [0] * conversations
    schedule = []
    for c in order:
        schedule.append(
            Turn(
                conversation=c,
                persona=c % personas,
                turn=seen[c],
                question=rng.choice(QUESTIONS),
                knowledge=knowledge_block(rng, knowledge_tokens, count),
            )
        )
        seen[c] += 1
    return schedule


def turn_messages(
    instructions: str, history: list[tuple[str, str]], turn: Turn
) -> tuple[ChatMessage, ...]:
    """The prompt builder's layout: instructions, history, then knowledge and the question."""
    messages = [ChatMessage("system", instructions)]
    for question, answer in history:
        messages += [ChatMessage("user", question), ChatMessage("assistant", answer)]
    messages.append(ChatMessage("user", f"{turn.knowledge}\n\nQuestion: {turn.question}"))
    return tuple(messages)
