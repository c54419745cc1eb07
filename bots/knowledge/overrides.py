"""`knowledge.yaml` in a knowledge folder: what to index beyond, or leave out despite, the rules.

    include: ["_static/glossary.json"]   # indexed even where the site-build rules leave it out
    exclude: ["whatsnew/*", "*.pdf"]     # never indexed
    dense: true                          # hybrid retrieval (the dense extra, see `dense`)
    audience: [...]                      # who may see which documents (see `audience`)

Globs match the path relative to the folder with `fnmatch` (`*` also crosses `/`); a folder's path
ends with `/`, so `whatsnew/*` leaves out the whole folder. `exclude` wins over `include`. A broken
file is reported (file, line, key) and the folder is indexed with the rules alone; if it declares
an `audience`, its documents are hidden from every place until it is fixed (or, in a running
process, the last good audience stays: see `KnowledgeIndex`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

import bots.knowledge.audience as audience
from bots.knowledge.hygiene import EXCLUDED

SETTINGS_FILE = "knowledge.yaml"
_KEYS = ("include", "exclude", "dense", audience.KEY)
_WILDCARD = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Overrides:
    """The `include` and `exclude` globs of one folder (none: the rules alone decide)."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    dense: bool = False
    audience: tuple[audience.Rule, ...] = ()
    valid: bool = True  # False: the file has problems (these are the defaults, or fail closed)

    def verdict(self, rel: str, reason: str | None) -> str | None:
        """Why `rel` is left out, given the rules' `reason` (None: it is indexed)."""
        if any(fnmatchcase(rel, pattern) for pattern in self.exclude):
            return EXCLUDED
        if reason and any(fnmatchcase(rel, pattern) for pattern in self.include):
            return None
        return reason

    def may_include_below(self, folder: str) -> bool:
        """Whether some `include` glob could match a path under `folder` (which ends with "/")."""
        for pattern in self.include:
            literal = pattern[: m.start()] if (m := _WILDCARD.search(pattern)) else pattern
            if literal.startswith(folder) or folder.startswith(literal):
                return True
        return False


def load_overrides(root: Path) -> tuple[Overrides, list[str]]:
    """The overrides of the folder `root`, and its problems as "file:line: key: message"."""
    path = root / SETTINGS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Overrides(), []
    except (OSError, UnicodeDecodeError) as error:
        return Overrides(), [f"{path}: cannot read: {error}"]
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.context_mark or error.problem_mark
        line = mark.line + 1 if mark else 1
        return _broken(text), [f"{path}:{line}: bad YAML: {error.problem or error}"]
    except yaml.YAMLError as error:
        return _broken(text), [f"{path}: bad YAML: {error}"]
    if data is None:
        return Overrides(), []
    if not isinstance(node, yaml.MappingNode) or not isinstance(data, dict):
        problem = f"{path}:1: expected a mapping with the keys {', '.join(_KEYS)}"
        return _broken(text), [problem]
    nodes = {key.value: (key.start_mark.line + 1, value) for key, value in node.value}
    problems: list[str] = []
    globs: dict[str, tuple[str, ...]] = {}
    dense = False
    rules: tuple[audience.Rule, ...] = ()
    for key, value in data.items():
        line, value_node = nodes.get(key, (1, node))
        where = f"{path}:{line}: {key}"
        if key not in _KEYS:
            problems.append(f"{where}: unknown key (known: {', '.join(_KEYS)})")
        elif key == audience.KEY:
            rules, found = audience.parse_audience(value_node, value, f"{path}:{line}")
            problems += found
        elif key == "dense":
            if not isinstance(value, bool):
                problems.append(f"{where}: must be true or false")
            dense = value is True
        elif not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            problems.append(f"{where}: must be a list of globs such as ['whatsnew/*']")
        else:
            globs[key] = tuple(value)
    if problems:
        return _broken(text), problems
    return Overrides(globs.get("include", ()), globs.get("exclude", ()), dense, rules), []


def _broken(text: str) -> Overrides:
    """The overrides of a file with problems: the rules alone, failing closed on an audience."""
    return Overrides(audience=audience.unreadable(text), valid=False)
