"""The persona snapshot: what one `persona.md` (plus its folder) says, frozen."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from bots.persona.adapter import PersonaAdapter

Grounding = Literal["strict", "open"]


@dataclass(frozen=True)
class PersonaError:
    """A problem a persona author can fix, pointing at the file, line and key."""

    path: Path
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "line": self.line, "key": self.key, "message": self.message}


class PersonaInvalid(Exception):
    """Raised by the loader with every problem found in one file."""

    def __init__(self, errors: list[PersonaError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class Sampling:
    """Per-persona generation settings (`model:` in persona.md); None means the global default."""

    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    repeat_penalty: float | None = None


@dataclass(frozen=True)
class Access:
    """Who may talk to the persona; empty tuples mean everyone who can see the bot."""

    users: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class PinnedDocument:
    """A document that goes whole into every prompt of a persona (`pinned:` in persona.md)."""

    path: str  # as sources show it: relative to the persona folder, or "<library>/<path>"
    title: str
    text: str


class PinnedProblem(Exception):
    """A pinned document that cannot be used; the message says why (shown with file and line)."""


class PinnedDocuments(Protocol):
    """Reads pinned documents and says whether they fit; the loader calls it (see chat.pinned)."""

    def read(self, folder: Path, libraries: Sequence[str], path: str) -> PinnedDocument:
        """The document `path` names for a persona in `folder` naming `libraries`; raises
        PinnedProblem when it is missing, not a document, or cannot be read."""
        ...

    def problem(self, documents: Sequence[PinnedDocument]) -> str:
        """Why `documents` together cannot go into every prompt ("" when they can)."""
        ...


@dataclass(frozen=True)
class Persona:
    """An immutable snapshot of one persona; a reply holds one snapshot from start to end."""

    id: str
    folder: Path
    instructions: str
    content_hash: str
    loaded_at: float
    name: str = ""
    description: str = ""
    avatar: Path | None = None
    greeting: str = ""
    starters: tuple[str, ...] = ()
    knowledge: tuple[str, ...] = ()
    grounding: Grounding = "open"
    citations: bool = False
    sampling: Sampling = field(default_factory=Sampling)
    discord_channels: tuple[str, ...] = ()
    slack_channels: tuple[str, ...] = ()
    access: Access = field(default_factory=Access)
    pinned: tuple[PinnedDocument, ...] = ()
    adapter: PersonaAdapter | None = None  # None: the base model

    @property
    def display_name(self) -> str:
        return self.name or self.id

    @property
    def source(self) -> Path:
        return self.folder / PERSONA_FILE


PERSONA_FILE = "persona.md"
