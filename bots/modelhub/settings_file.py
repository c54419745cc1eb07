"""Write `[model]` keys into `bots.toml`, keeping every other line (comments included) as it was.

tomllib only reads; rather than pull in a TOML writer for one table, the key's line is replaced
(or added under `[model]`, or a `[model]` table appended), and the result is read back with
tomllib: a file this cannot edit safely is left untouched and the error says so.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

SECTION = "model"
_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$")


class SettingsFileError(ValueError):
    """The settings file could not be edited; names the file and why."""


def set_model_keys(path: Path, values: Mapping[str, str]) -> None:
    """Set `model.<key> = "<value>"` for each item in `path` (created when missing), atomically."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    lines = text.splitlines()
    start, end = _section(lines)
    for key, value in values.items():
        line = f"{key} = {json.dumps(value)}"
        if start is None:
            if lines and lines[-1].strip():
                lines.append("")
            lines += [f"[{SECTION}]", line]
            start, end = _section(lines)
            continue
        assert end is not None
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        at = next((i for i in range(start + 1, end) if pattern.match(lines[i])), None)
        if at is None:
            lines.insert(start + 1, line)
            end += 1
        else:
            lines[at] = line
    new_text = "\n".join(lines) + "\n"
    _check(path, new_text, values)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(new_text, encoding="utf-8")
    tmp.replace(path)


def _section(lines: list[str]) -> tuple[int | None, int | None]:
    """The `[model]` header's line and the line after the table's last one."""
    start = None
    for i, line in enumerate(lines):
        match = _HEADER.match(line)
        if match is None:
            continue
        if start is not None:
            return start, i
        if match.group(1) == SECTION:
            start = i
    return (start, len(lines)) if start is not None else (None, None)


def _check(path: Path, text: str, values: Mapping[str, str]) -> None:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsFileError(f"{path}: cannot be edited safely ({exc}); set it by hand") from exc
    section = data.get(SECTION)
    for key, value in values.items():
        if not isinstance(section, dict) or section.get(key) != value:
            raise SettingsFileError(
                f"{path}: {SECTION}.{key} is set in a way this cannot edit; set it by hand"
            )
