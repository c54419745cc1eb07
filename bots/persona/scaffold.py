"""`bots new NAME`: create a persona folder with a commented persona.md."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from bots.persona.loader import valid_persona_id
from bots.persona.model import PERSONA_FILE


class ScaffoldError(ValueError):
    """The persona cannot be created (bad name, folder exists)."""


def new_persona(personas_dir: Path, persona_id: str) -> Path:
    """Write `personas_dir/persona_id/persona.md` from the template; returns its path."""
    if not valid_persona_id(persona_id):
        raise ScaffoldError(
            f"{persona_id!r} is not a valid persona id: use lowercase letters, digits, - and _"
        )
    folder = personas_dir / persona_id
    if folder.exists():
        raise ScaffoldError(f"{folder} already exists")
    template = files("bots.persona").joinpath("templates", "persona.md").read_text(encoding="utf-8")
    title = persona_id.replace("-", " ").replace("_", " ").title()
    folder.mkdir(parents=True)
    path = folder / PERSONA_FILE
    path.write_text(template.format(id=persona_id, title=title), encoding="utf-8")
    return path
