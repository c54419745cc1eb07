"""Turn thumbs-down chat feedback into eval cases an author completes: `bots feedback --to-evals`.

The cases are appended as text, so the author's comments and layout stay as they were; each
gets a `todo:` check (reported as "todo" until replaced by real checks) and the answer people
disliked as a comment above it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bots.chat.model import Feedback
from bots.evals.loader import compose, default_name, parse_evals
from bots.evals.model import EVALS_FILE

THUMBS_DOWN = -1
ANSWER_COMMENT_CHARS = 600
COMMENT_WIDTH = 96
TODO_TEXT = "replace with checks (contains, not_contains, cites, declines, max_chars)"
# Wide enough that a question and the todo stay on one line each.
YAML_WIDTH = 1000


class AppendRefused(Exception):
    """The evals file cannot take appended cases as it is; the message says why and where."""


@dataclass(frozen=True)
class AppendResult:
    """What `append_feedback_cases` did."""

    path: Path
    added: tuple[str, ...]  # the questions appended
    already_there: int  # thumbs-down questions the file already asks


def append_feedback_cases(
    folder: Path, feedback: Sequence[Feedback], *, now: float | None = None
) -> AppendResult:
    """Append one TODO case per distinct thumbs-down question not asked in `evals.yaml` yet,
    oldest first."""
    path = folder / EVALS_FILE
    raw = path.read_bytes() if path.is_file() else b""
    text = raw.decode("utf-8-sig", errors="replace")
    _check_appendable(path, text)
    before = parse_evals(path, raw)
    asked = {_key(case.turns[-1]) for case in before.cases}
    names = {case.name for case in before.cases}
    # The same question disliked several times is one case, with every disliked answer above it.
    groups: dict[str, list[Feedback]] = {}
    already_there: set[str] = set()
    for item in sorted(feedback, key=lambda f: f.created_at):  # oldest first, as a log reads
        key = _key(item.question)
        if item.value != THUMBS_DOWN or not key:
            continue
        if key in asked:
            already_there.add(key)
        else:
            groups.setdefault(key, []).append(item)
    blocks = [_case_text(items, names) for items in groups.values()]
    added = [items[0].question.strip() for items in groups.values()]
    if not blocks:
        return AppendResult(path, (), len(already_there))
    stamp = time.strftime("%Y-%m-%d", time.localtime(now if now is not None else time.time()))
    header = f"# Thumbs-down questions from chat, added by `bots feedback --to-evals` on {stamp}.\n"
    lead = "" if not text or text.endswith("\n") else "\n"
    new_text = text + lead + ("\n" if text.strip() else "") + header + "\n".join(blocks)
    after = parse_evals(path, new_text.encode())
    appended = len(after.cases) - len(before.cases)
    if appended != len(blocks) or len(after.errors) != len(before.errors):
        raise AppendRefused(f"{path}: appending would not give valid cases; file left unchanged")
    _write_atomically(path, new_text)
    return AppendResult(path, tuple(added), len(already_there))


def _check_appendable(path: Path, text: str) -> None:
    node, problem = compose(path, text)
    if problem is not None:
        raise AppendRefused(f"{problem} (fix it first; nothing was appended)")
    if node is None:
        return
    if not isinstance(node, yaml.SequenceNode) or node.flow_style:
        line = node.start_mark.line + 1
        raise AppendRefused(
            f"{path}:{line}: cases can be appended to a list written one '- ask:' per case "
            "(a block list) only; nothing was appended"
        )


def _case_text(items: Sequence[Feedback], names: set[str]) -> str:
    lines = []
    for item in items:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(item.created_at))
        lines.append(f"# thumbs-down in {item.platform} on {when}; the answer was:")
        lines += [f"#   {line}" for line in _wrap(item.answer)]
    question = items[0].question.strip()
    case: dict[str, Any] = {}
    name = default_name(question)
    if name in names:
        number = 2
        while f"{name} ({number})" in names:
            number += 1
        name = f"{name} ({number})"
        case["name"] = name
    names.add(name)
    case["ask"] = question
    case["todo"] = TODO_TEXT
    dumped = yaml.safe_dump([case], sort_keys=False, allow_unicode=True, width=YAML_WIDTH)
    return "\n".join(lines) + "\n" + dumped


def _wrap(answer: str) -> list[str]:
    flat = " ".join(answer.split()) or "(empty)"
    if len(flat) > ANSWER_COMMENT_CHARS:
        flat = flat[: ANSWER_COMMENT_CHARS - 1] + "…"
    lines, line = [], ""
    for word in flat.split(" "):
        if line and len(line) + 1 + len(word) > COMMENT_WIDTH:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line]


def _key(question: str) -> str:
    return " ".join(question.split()).casefold()


def _write_atomically(path: Path, text: str) -> None:
    # A hidden temporary name: the knowledge scan and the reload both ignore it.
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def feedback_rows(feedback: Sequence[Feedback]) -> list[dict[str, Any]]:
    """Feedback as plain dicts (for `--json` and the workbench)."""
    return [
        {
            "turn_id": f.turn_id,
            "persona": f.persona_id,
            "platform": f.platform,
            "user": f.user_id,
            "value": f.value,
            "at": f.created_at,
            "question": f.question,
            "answer": f.answer,
            "sources": [s.get("path", "") for s in f.sources],
        }
        for f in feedback
    ]
