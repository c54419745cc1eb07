"""`bots check`: validate every persona and library without loading the model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from bots.chat.pinned import PinnedReader
from bots.engine.adapter_files import adapter_files
from bots.evals.loader import load_evals
from bots.knowledge.library import KnowledgeBase
from bots.knowledge.model import Exclusion
from bots.persona.registry import PersonaRegistry
from bots.settings import Settings

# Paths named per reason in the summary; the workbench lists them all.
EXAMPLE_PATHS = 3


def run_checks(settings: Settings) -> tuple[list[str], str]:
    """Return every problem as `file:line: key: message`, and a summary: one line per folder
    with what was left out as not content (count per reason, a few paths each), then the totals.
    """
    knowledge = KnowledgeBase(settings.personas_dir, settings.knowledge_dir, settings.index_dir)
    # No model here: pinned documents are read and checked, their fit waits for `bots serve`.
    pinned = PinnedReader(settings.knowledge_dir, None, settings.retrieval.max_knowledge_tokens)
    registry = PersonaRegistry(
        settings.personas_dir, knowledge.library_names, pinned, adapter_files(settings)
    )
    registry.load_all()
    problems = [str(e) for e in registry.errors()]
    for persona_id in registry.folder_ids():
        problems.extend(str(e) for e in load_evals(settings.personas_dir / persona_id).errors)
    documents = 0
    notes: list[str] = []
    indexes = [(p.id, knowledge.index_for_persona(p.id)) for p in registry.personas()]
    indexes += [(name, knowledge.index_for_library(name)) for name in knowledge.library_names()]
    for name, index in indexes:
        index.refresh()
        documents += index.stats.documents
        problems.extend(index.stats.skipped)
        if index.stats.excluded:
            notes.append(describe_exclusions(name, index.stats.excluded))
    summary = (
        f"{len(registry.states())} personas, {len(knowledge.library_names())} libraries, "
        f"{documents} documents: {len(problems)} problem(s)"
    )
    return problems, "\n".join([*notes, summary])


def describe_exclusions(folder: str, excluded: Sequence[Exclusion]) -> str:
    """One line: how many paths of `folder` were left out for each reason, with examples."""
    counts = Counter(e.reason for e in excluded)
    parts = []
    for reason, count in counts.most_common():
        paths = [e.rel for e in excluded if e.reason == reason]
        shown = ", ".join(paths[:EXAMPLE_PATHS]) + (", ..." if count > EXAMPLE_PATHS else "")
        parts.append(f"{count} {reason}: {shown}")
    return f"{folder}: left out {len(excluded)} path(s) as not content: " + "; ".join(parts)
