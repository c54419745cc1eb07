"""The registry: persona id -> last good snapshot, plus each persona's current error."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bots.persona.adapter import AdapterCheck
from bots.persona.file_read import PersonaChanging
from bots.persona.loader import content_hash, load_persona, valid_persona_id
from bots.persona.model import (
    PERSONA_FILE,
    Persona,
    PersonaError,
    PersonaInvalid,
    PinnedDocuments,
    PinnedProblem,
)

log = logging.getLogger(__name__)

Outcome = Literal["loaded", "unchanged", "error", "removed", "absent"]


@dataclass(frozen=True)
class PersonaState:
    """What `/status` shows of a persona: the snapshot serving, and the errors of a bad file."""

    id: str
    persona: Persona | None
    errors: tuple[PersonaError, ...] = ()
    last_reload: float = 0.0
    reloads: int = 0


@dataclass(frozen=True)
class ReloadEvent:
    """Sent to listeners after every reload attempt that changed something."""

    persona_id: str
    outcome: Outcome
    state: PersonaState | None
    at: float = field(default_factory=time.time)


Listener = Callable[[ReloadEvent], None]


class PersonaRegistry:
    """Holds the personas of one folder. Thread-safe; readers get immutable snapshots.

    With `pinned`, each snapshot holds its pinned documents' text as read when it loaded: a
    pinned document edited into one that no longer fits (or deleted) is an error, and the last
    good snapshot, with the last good text, keeps serving. With `adapters`, a persona may name
    a LoRA adapter (`adapter:`); a file that cannot serve is an error the same way.
    """

    def __init__(
        self,
        personas_dir: Path,
        libraries: Callable[[], Collection[str]],
        pinned: PinnedDocuments | None = None,
        adapters: AdapterCheck | None = None,
    ) -> None:
        self.root = personas_dir
        self._libraries = libraries
        self._pinned = pinned
        self._adapters = adapters
        self._states: dict[str, PersonaState] = {}
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """Call `listener` (from the reloading thread) after each effective reload."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def load_all(self) -> None:
        """Load every persona folder and forget folders that disappeared."""
        found = set(self.folder_ids())
        for persona_id in sorted(found | set(self._states)):
            self.reload(persona_id)

    def folder_ids(self) -> list[str]:
        """Folder names under the root that hold a persona.md and resolve inside the root."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if self._persona_folder(p.name))

    def get(self, persona_id: str) -> Persona | None:
        state = self._states.get(persona_id)
        return state.persona if state else None

    def personas(self) -> list[Persona]:
        """Serving snapshots, sorted by id."""
        return [s.persona for _, s in sorted(self._states.items()) if s.persona is not None]

    def states(self) -> list[PersonaState]:
        return [s for _, s in sorted(self._states.items())]

    def state(self, persona_id: str) -> PersonaState | None:
        return self._states.get(persona_id)

    def errors(self) -> list[PersonaError]:
        return [e for s in self.states() for e in s.errors]

    def reload(self, persona_id: str) -> Outcome:
        """Re-read one persona; a bad file keeps the last good snapshot serving."""
        with self._lock:
            outcome, state = self._reload_locked(persona_id)
        if outcome != "unchanged" and outcome != "absent":
            self._notify(ReloadEvent(persona_id, outcome, state))
        return outcome

    def _reload_locked(self, persona_id: str) -> tuple[Outcome, PersonaState | None]:
        old = self._states.get(persona_id)
        folder = self.root / persona_id
        if not self._persona_folder(persona_id):
            if old is None:
                return "absent", None
            del self._states[persona_id]
            log.info("persona %s removed", persona_id)
            return "removed", None
        now = time.time()
        reloads = (old.reloads if old else 0) + 1
        if old and old.persona and not old.errors and self._same_content(old.persona):
            return "unchanged", old
        try:
            persona = load_persona(
                folder,
                self._libraries(),
                root=self.root,
                pinned=self._pinned,
                adapters=self._adapters,
            )
        except PersonaChanging:
            return "unchanged", old  # mid-write: the writer's close event reloads it
        except PersonaInvalid as exc:
            state = PersonaState(
                persona_id, old.persona if old else None, tuple(exc.errors), now, reloads
            )
            if old and old.errors == state.errors:
                return "unchanged", old
            self._states[persona_id] = state
            for error in exc.errors:
                log.warning(
                    "persona %s: %s (still serving the last good version)", persona_id, error
                )
            return "error", state
        state = PersonaState(persona_id, persona, (), now, reloads)
        self._states[persona_id] = state
        log.info("persona %s loaded (%s)", persona_id, persona.content_hash)
        return "loaded", state

    def _persona_folder(self, persona_id: str) -> bool:
        if not valid_persona_id(persona_id):
            return False
        folder = self.root / persona_id
        source = folder / PERSONA_FILE
        root = self.root.resolve()
        try:
            return (
                folder.is_dir()
                and source.is_file()
                and folder.resolve().is_relative_to(root)
                and source.resolve().is_relative_to(root)
            )
        except OSError:
            return False

    def _same_content(self, persona: Persona) -> bool:
        """Whether persona.md and the pinned documents still read as the snapshot has them."""
        try:
            if content_hash(persona.source.read_bytes()) != persona.content_hash:
                return False
            if self._pinned is None:
                return True
            return all(
                self._pinned.read(persona.folder, persona.knowledge, doc.path) == doc
                for doc in persona.pinned
            )
        except (OSError, PinnedProblem):
            return False

    def _notify(self, event: ReloadEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken listener must not stop reloads
                log.exception("reload listener failed")
