"""`bots check`: validate every persona and library without loading the model."""

from __future__ import annotations

from bots.evals.loader import load_evals
from bots.knowledge.library import KnowledgeBase
from bots.persona.registry import PersonaRegistry
from bots.settings import Settings


def run_checks(settings: Settings) -> tuple[list[str], str]:
    """Return every problem as `file:line: key: message`, and a one-line summary."""
    knowledge = KnowledgeBase(settings.personas_dir, settings.knowledge_dir, settings.index_dir)
    registry = PersonaRegistry(settings.personas_dir, knowledge.library_names)
    registry.load_all()
    problems = [str(e) for e in registry.errors()]
    for persona_id in registry.folder_ids():
        problems.extend(str(e) for e in load_evals(settings.personas_dir / persona_id).errors)
    documents = 0
    indexes = [(p.id, knowledge.index_for_persona(p.id)) for p in registry.personas()]
    indexes += [(name, knowledge.index_for_library(name)) for name in knowledge.library_names()]
    for _, index in indexes:
        index.refresh()
        documents += index.stats.documents
        problems.extend(index.stats.skipped)
    summary = (
        f"{len(registry.states())} personas, {len(knowledge.library_names())} libraries, "
        f"{documents} documents: {len(problems)} problem(s)"
    )
    return problems, summary
