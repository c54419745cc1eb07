"""Project folders for tests: persona files and a small handbook library, written in tmp_path."""

from __future__ import annotations

import textwrap
from pathlib import Path

HANDBOOK = {
    "vacation.md": """\
        # Vacation
        ## Vacation days
        Every employee gets 25 vacation days per year. Unused days expire on March 31.
        """,
    "expenses.md": """\
        # Expenses
        ## Expense reports
        File expense reports in the finance portal within 30 days. Attach every receipt.
        """,
    "security.md": """\
        # Security
        ## Passwords
        Passwords must be at least 14 characters long and stored in the password manager.
        """,
}

# The cases the `bots eval` comparisons run (models, adapters): an answer that knows the number
# of days passes both; one that does not fails the first.
HR_EVALS = """\
- name: knows the number of days
  ask: How many vacation days do I get?
  contains: "25"
- name: stays short
  ask: How many vacation days do I get?
  max_chars: 400
"""


def write(path: Path, text: str) -> Path:
    """Write dedented text, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def persona_md(body: str = "You are a helpful test bot. Answer briefly.", **front: str) -> str:
    """A persona.md: front matter from `front` (values as YAML), then `body`."""
    header = "".join(f"{k}: {v}\n" for k, v in front.items())
    return f"---\n{header}---\n{body}\n"


def write_handbook(root: Path) -> None:
    """The handbook library (vacation, expenses, security) under root/knowledge/handbook."""
    for name, text in HANDBOOK.items():
        write(root / "knowledge" / "handbook" / name, text)


def write_project(root: Path) -> Path:
    """A strict handbook persona (the librarian, citations on), a chatty one (the pirate) and
    the handbook library they share."""
    write_handbook(root)
    write(
        root / "personas" / "librarian" / "persona.md",
        persona_md(
            "You are the librarian. Answer only from the documents.",
            name="Libby",
            knowledge="[handbook]",
            grounding="strict",
            citations="true",
        ),
    )
    write(
        root / "personas" / "pirate" / "persona.md",
        persona_md("You are a pirate. Always answer like a pirate.", name="Pete"),
    )
    return root


def write_hr(root: Path) -> Path:
    """The `hr` persona with HR_EVALS, the cases the eval comparisons run."""
    write(root / "personas" / "hr" / "persona.md", persona_md("You answer HR questions."))
    write(root / "personas" / "hr" / "evals.yaml", HR_EVALS)
    return root
