"""Wire one bot process: settings -> registry, knowledge, engine, store, chat service, watcher.

The engine is held in a `ModelSwitch`, so that `bots serve` can switch the model live
(`bots.model_reload`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bots.chat.pinned import PinnedReader
from bots.chat.service import ChatService
from bots.engine.adapter_files import adapter_files
from bots.engine.base import Engine
from bots.engine.factory import make_engine
from bots.engine.switch import ModelSwitch
from bots.knowledge.library import KnowledgeBase
from bots.persona.model import PERSONA_FILE
from bots.persona.registry import PersonaRegistry
from bots.persona.watcher import Watcher
from bots.settings import Settings
from bots.store.base import ConversationStore
from bots.store.factory import make_store

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything a running bot holds. A platform adapter receives only `service` (which knows
    the settings and the registry) and `adapters`, where it reports its connection state."""

    settings: Settings
    registry: PersonaRegistry
    knowledge: KnowledgeBase
    engine: ModelSwitch
    store: ConversationStore
    service: ChatService
    watcher: Watcher | None = None
    started_at: float = 0.0
    adapters: dict[str, str] = field(default_factory=dict)
    file_listeners: list[Callable[[set[Path]], None]] = field(default_factory=list)
    _model_loaded: bool = False

    @classmethod
    def create(cls, settings: Settings, engine: Engine | None = None) -> Runtime:
        """Build the parts (no model loaded, no thread started yet)."""
        knowledge = KnowledgeBase(settings.personas_dir, settings.knowledge_dir, settings.index_dir)
        switch = ModelSwitch(engine or make_engine(settings), model_source(settings))
        pinned = PinnedReader(
            settings.knowledge_dir, switch.count_tokens, settings.retrieval.max_knowledge_tokens
        )
        registry = PersonaRegistry(
            settings.personas_dir, knowledge.library_names, pinned, adapter_files(settings)
        )
        store = make_store(settings)
        service = ChatService(settings, registry, knowledge, switch, store)
        return cls(settings, registry, knowledge, switch, store, service)

    async def start(self, *, watch: bool = True, load_model: bool = True) -> None:
        """Load personas and indexes, load the model, start watching files."""
        self.started_at = time.time()
        self.store.publish(self.facts)  # before the first heartbeat, which sends them
        await self.store.open()
        if load_model:
            # First: whether pinned documents fit is counted with the model's tokenizer.
            await self.engine.start()
        self._model_loaded = load_model
        await asyncio.to_thread(self.registry.load_all)
        await asyncio.to_thread(self._refresh_indexes)
        if watch:
            self.watcher = Watcher(
                [self.settings.personas_dir, self.settings.knowledge_dir], self.on_files_changed
            )
            self.watcher.start()

    async def close(self) -> None:
        if self.watcher is not None:
            await asyncio.to_thread(self.watcher.stop)
        if self._model_loaded:
            await self.engine.close()
        await self.store.close()

    def facts(self) -> dict[str, Any]:
        """What this instance tells the others (and /status): its persona content hashes and
        the connections it holds, so an operator sees when instances disagree."""
        return {
            "started_at": self.started_at,
            "personas": {p.id: p.content_hash for p in self.registry.personas()},
            "adapters": dict(self.adapters),
        }

    def _refresh_indexes(self) -> None:
        for persona in self.registry.personas():
            self.knowledge.index_for_persona(persona.id).refresh()
            for library in persona.knowledge:
                self.knowledge.index_for_library(library).refresh()

    def on_files_changed(self, paths: set[Path]) -> None:
        """Reload the personas and re-index the documents a batch of file events touched."""
        personas_root = self.settings.personas_dir.resolve()
        knowledge_root = self.settings.knowledge_dir.resolve()
        reload_ids: set[str] = set()
        libraries_changed = False
        for path in paths:
            absolute = path.absolute()
            for root, kind in ((personas_root, "persona"), (knowledge_root, "library")):
                try:
                    relative = absolute.relative_to(root)
                except ValueError:
                    continue
                if not relative.parts:
                    continue
                if kind == "persona":
                    reload_ids.add(relative.parts[0])
                    if len(relative.parts) > 1 and relative.parts[1:] != (PERSONA_FILE,):
                        self._refresh_documents(path)
                else:
                    libraries_changed |= len(relative.parts) == 1
                    self._refresh_documents(path)
                    reload_ids |= self._pinning(relative.parts[0])
        if libraries_changed:
            # A library appeared or vanished: personas naming it may become valid or invalid.
            reload_ids |= {s.id for s in self.registry.states()}
        for persona_id in sorted(reload_ids):
            self.registry.reload(persona_id)
        for listener in list(self.file_listeners):
            try:
                listener(paths)
            except Exception:  # a broken listener must not stop reloads
                log.exception("file change listener failed")

    def _pinning(self, library: str) -> set[str]:
        """Personas that pin a document of `library`, or that are in error (a pinned document
        that was missing may just have appeared)."""
        prefix = library + "/"
        return {
            state.id
            for state in self.registry.states()
            if state.errors
            or (state.persona and any(d.path.startswith(prefix) for d in state.persona.pinned))
        }

    def add_file_listener(self, listener: Callable[[set[Path]], None]) -> None:
        """Call `listener(paths)` on the watcher thread after each batch is reloaded and indexed."""
        self.file_listeners.append(listener)

    def remove_file_listener(self, listener: Callable[[set[Path]], None]) -> None:
        if listener in self.file_listeners:
            self.file_listeners.remove(listener)

    def _refresh_documents(self, path: Path) -> None:
        try:
            self.knowledge.refresh_path(path)
        except Exception:  # a bad document is reported by the index; watching goes on
            log.exception("re-indexing after a change to %s failed", path)


def model_source(settings: Settings) -> str:
    """What the settings say to serve, as `/status` names it: a path, an endpoint's model."""
    model = settings.model
    if model.endpoint:
        return f"{model.endpoint} ({model.endpoint_model or 'its default model'})"
    return model.path or "the embedded SmolLM2-135M-Instruct"
