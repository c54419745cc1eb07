"""All the indexes of a process: one per persona folder and one per shared library."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import bots.knowledge.ranking as ranking
from bots.knowledge.audience import EVERYONE, PUBLIC, Access, Reader
from bots.knowledge.index import KnowledgeIndex
from bots.knowledge.model import Hit, IndexStats, Retriever
from bots.knowledge.scan import is_ignored_name


class KnowledgeError(LookupError):
    """A persona or library name that does not name a knowledge folder."""


class UnknownLibrary(KnowledgeError):
    """A library name that is not a folder directly under the knowledge folder."""


class UnknownPersona(KnowledgeError):
    """A persona id that is not a folder directly under the personas folder."""


class MergedRetriever:
    """Searches several indexes and keeps the best hits of all.

    Raw BM25 scores of different indexes are not comparable: their idf depends on how many
    chunks each index holds and how common each word is there. Each index therefore scores
    against its own attainable maximum (1.0 = every query term present once in a chunk of
    average length, see `LexicalIndex.search`); those normalised scores are comparable, so the
    merge is a plain sort. Sorting is stable and indexes are asked in order (persona folder first,
    then libraries as listed), which settles ties in the persona's favour.
    """

    def __init__(self, indexes: Sequence[KnowledgeIndex]) -> None:
        self.indexes = tuple(indexes)

    def search(self, query: str, k: int = 4, reader: Reader = EVERYONE) -> list[Hit]:
        """The `k` best hits over all indexes that `reader` may see, best first, a few per
        document (`ranking`)."""
        hits = [hit for index in self.indexes for hit in index.search(query, k, reader)]
        hits.sort(key=lambda hit: hit.score, reverse=True)
        return ranking.diversify(hits, k, document=lambda h: h.path, score=lambda h: h.score)


class KnowledgeBase:
    """Owns the indexes: created on first use, refreshed when the watcher reports a change.

    Methods block while an index is built or refreshed (seconds for a large library the first
    time, milliseconds after); async callers run them with `asyncio.to_thread`. Searches may run
    in any thread at any time.
    """

    def __init__(self, personas_dir: Path, knowledge_dir: Path, cache_dir: Path) -> None:
        self.personas_dir = personas_dir
        self.knowledge_dir = knowledge_dir
        self.cache_dir = cache_dir
        self._indexes: dict[tuple[str, str], KnowledgeIndex] = {}
        self._lock = threading.Lock()

    def library_names(self) -> list[str]:
        """The shared libraries: the folders directly under the knowledge folder."""
        if not self.knowledge_dir.is_dir():
            return []
        return sorted(
            entry.name
            for entry in os.scandir(self.knowledge_dir)
            if entry.is_dir() and not is_ignored_name(entry.name)
        )

    def index_for_persona(self, persona_id: str) -> KnowledgeIndex:
        """The index of a persona's own folder, built the first time it is asked for."""
        _check_name(persona_id, "persona id", UnknownPersona)
        if not (self.personas_dir / persona_id).is_dir():
            raise UnknownPersona(
                f"unknown persona {persona_id!r}: no folder {self.personas_dir / persona_id}"
            )
        return self._index("personas", persona_id, None)

    def index_for_library(self, name: str) -> KnowledgeIndex:
        """The index of a shared library, built the first time it is asked for."""
        _check_name(name, "library name", UnknownLibrary)
        if name not in self.library_names():
            known = ", ".join(self.library_names()) or "none"
            raise UnknownLibrary(
                f"unknown library {name!r}: no folder {self.knowledge_dir / name}"
                f" (libraries: {known})"
            )
        return self._index("knowledge", name, name)

    def retriever(self, persona_id: str, libraries: Sequence[str]) -> Retriever:
        """Search the persona's folder and the libraries it names, as one."""
        indexes = [self.index_for_persona(persona_id)]
        indexes.extend(self.index_for_library(name) for name in dict.fromkeys(libraries))
        return MergedRetriever(indexes)

    def refresh_path(self, changed: Path) -> None:
        """Refresh the index whose folder holds `changed` (a file that was created, modified,
        deleted or moved); indexes not built yet are left to be built when first used."""
        for kind, base in (("personas", self.personas_dir), ("knowledge", self.knowledge_dir)):
            rel = _relative_to(changed, base)
            if rel is None:
                continue
            # Editor scratch files, hidden folders, persona.md and evals.yaml are not knowledge.
            if rel.parts and not any(is_ignored_name(part) for part in rel.parts):
                with self._lock:
                    index = self._indexes.get((kind, rel.parts[0]))
                if index is not None:
                    index.refresh()
            return

    def access(self, persona_id: str, path: str) -> Access:
        """Who may see the document a hit of `persona_id` named `path` ("<library>/<rel>" or a
        path in the persona's folder), as of the last refresh; PUBLIC if no built index has it."""
        library, _, rel = path.partition("/")
        with self._lock:
            owner = self._indexes.get(("knowledge", library)) if rel else None
            own = self._indexes.get(("personas", persona_id))
        for index, name in ((owner, rel), (own, path)):
            if index is not None and (found := index.access(name)):
                return found
        return PUBLIC

    def stats(self) -> dict[str, IndexStats]:
        """The figures of every index built so far, keyed "personas/<id>" or "knowledge/<name>"."""
        with self._lock:
            indexes = dict(self._indexes)
        return {f"{kind}/{name}": index.stats for (kind, name), index in sorted(indexes.items())}

    def _index(self, kind: str, name: str, library: str | None) -> KnowledgeIndex:
        base = self.personas_dir if kind == "personas" else self.knowledge_dir
        with self._lock:
            index = self._indexes.get((kind, name))
            if index is None:
                index = KnowledgeIndex(base / name, self.cache_dir / kind / name, library=library)
                self._indexes[(kind, name)] = index
        if not index.refreshed:
            # Outside the lock: building one large library must not hold up the others.
            index.refresh()
        return index


def _check_name(name: str, what: str, error: type[KnowledgeError]) -> None:
    """Refuse names that are not one plain folder name: "", ".", "..", paths, hidden names."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise error(f"invalid {what} {name!r}: it must be the name of one folder")


def _relative_to(path: Path, base: Path) -> Path | None:
    """`path` relative to `base`, comparing absolute and symlink-resolved forms; None outside."""
    path = Path(os.path.abspath(path))
    for candidate in (Path(os.path.abspath(base)), base.resolve()):
        if path.is_relative_to(candidate):
            return path.relative_to(candidate)
        resolved_parent = path.parent.resolve() / path.name
        if resolved_parent.is_relative_to(candidate):
            return resolved_parent.relative_to(candidate)
    return None
