"""Every `bots ...` command in the README's shell blocks is one the real CLI accepts.

Each command goes through `bots.cli.main` with `--help` appended: click parses every option name
(an unknown one fails with "No such option") and then prints the help instead of running.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from bots.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"
# An unlabelled fence counts as shell too, as the team's checker (shared/tools) reads it.
SHELL_LANGS = {"", "sh", "bash", "console", "shell"}
SEPARATORS = {"&&", "||", ";", "|", "&"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def shell_lines(markdown: str) -> list[str]:
    """The lines inside the shell code blocks, a `$ ` prompt dropped."""
    lines: list[str] = []
    lang: str | None = None
    for raw in markdown.splitlines():
        stripped = raw.strip()
        if stripped.startswith("```"):
            lang = None if lang is not None else stripped[3:].strip()
        elif lang in SHELL_LANGS:
            lines.append(stripped.removeprefix("$ "))
    return lines


def bots_commands(line: str) -> list[list[str]]:
    """The argument lists of the `bots` invocations on one shell line (after env assignments,
    `sudo [-u USER]` and a path to the program)."""
    if not re.search(r"(^|[\s/])bots(\s|$)", line):
        return []
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = []
    simple: list[str] = []
    for token in [*lexer, ";"]:
        if token not in SEPARATORS:
            simple.append(token)
            continue
        words = simple
        simple = []
        while words and ENV_ASSIGNMENT.match(words[0]):
            words = words[1:]
        if words[:1] == ["sudo"]:
            words = words[3:] if words[1:2] == ["-u"] else words[1:]
        if words and Path(words[0]).name == "bots":
            commands.append(words[1:])
    return commands


COMMANDS = [
    (line, args) for line in shell_lines(README.read_text()) for args in bots_commands(line)
]


def test_the_readme_commands_are_found() -> None:
    found = {" ".join(args) for _, args in COMMANDS}
    assert "serve --personas personas --knowledge knowledge --host 127.0.0.1 --port 8321" in found
    assert "--personas /srv/bots/personas --knowledge /srv/bots/knowledge check" in found
    assert "serve" in found  # behind `LD_PRELOAD=... BOTS_MODEL_N_GPU_LAYERS=-1`
    assert not any(args[:1] == ["bots"] for _, args in COMMANDS)  # `useradd ... bots` is not one


def test_extraction_splits_chains_and_drops_comments() -> None:
    line = "cd /opt/bots && sudo -u bots /opt/bots/.venv/bin/bots check  # see `bots status`"
    assert bots_commands(line) == [["check"]]
    assert bots_commands('bots ask tutor "What is it?" --json') == [
        ["ask", "tutor", "What is it?", "--json"]
    ]
    assert bots_commands("sudo systemctl restart bots") == []


@pytest.mark.parametrize(("line", "args"), COMMANDS, ids=[line for line, _ in COMMANDS])
def test_readme_command_parses(line: str, args: list[str]) -> None:
    result = CliRunner().invoke(main, [*args, "--help"])
    assert "No such option" not in result.output, f"{line}\n{result.output}"
    assert result.exit_code == 0, f"{line}\n{result.output}"
