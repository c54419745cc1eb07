"""Parse and validate `evals.yaml`: a list of cases, every problem named by file, line and key.

A case:

    - name: vacation days                 # optional; default: the question
      ask: How many vacation days do I get?   # or a list of user turns, answered in order
      contains: ["25", "/\\bdays?\\b/"]   # text, or /regular expression/; case-insensitive
      not_contains: sorry
      cites: acme-handbook/vacation.md    # must be among the sources (a path or its tail)
      declines: true                      # a `grounding: strict` persona must decline
      max_chars: 400

A broken file never touches the persona: the persona loader does not read it and the knowledge
scan ignores it. The cases that are valid still run, and the problems are reported beside them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bots.evals.model import EVALS_FILE, Checks, EvalCase, EvalError, EvalSuite, Pattern

MAX_EVALS_BYTES = 256 * 1024
MAX_CASES = 500
MAX_TURNS = 8
MAX_TEXT_CHARS = 4000
NAME_FROM_ASK_CHARS = 60
REGEX_DELIMITER = "/"
CHECK_KEYS = ("contains", "not_contains", "cites", "declines", "max_chars")
CASE_KEYS = ("name", "ask", *CHECK_KEYS, "todo")


def load_evals(folder: Path) -> EvalSuite:
    """Read `folder/evals.yaml`; a missing file is an empty suite, never an error."""
    path = folder / EVALS_FILE
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return EvalSuite(path, (), (), "", exists=False)
    except OSError as exc:
        return _broken(path, b"", EvalError(path, 0, "", f"cannot read: {exc.strerror}"))
    if size > MAX_EVALS_BYTES:
        error = EvalError(path, 0, "", f"file is {size} bytes; the limit is {MAX_EVALS_BYTES}")
        return _broken(path, b"", error)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return _broken(path, b"", EvalError(path, 0, "", f"cannot read: {exc.strerror}"))
    return parse_evals(path, raw)


def parse_evals(path: Path, raw: bytes) -> EvalSuite:
    """Validate the bytes of an evals file (`path` is only used in messages)."""
    digest = hashlib.sha256(raw).hexdigest()[:16]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return _broken(path, raw, EvalError(path, line, "", "not UTF-8 text"))
    node, problem = compose(path, text)
    if problem is not None:
        return _broken(path, raw, problem)
    errors: list[EvalError] = []
    cases: list[EvalCase] = []
    if node is None:
        return EvalSuite(path, (), (), digest, exists=True)
    if not isinstance(node, yaml.SequenceNode):
        line = node.start_mark.line + 1
        message = "must be a list of cases, each starting with '- ask:'"
        return _broken(path, raw, EvalError(path, line, "", message))
    if len(node.value) > MAX_CASES:
        line = node.value[MAX_CASES].start_mark.line + 1
        errors.append(EvalError(path, line, "", f"too many cases: the limit is {MAX_CASES}"))
    names: dict[str, int] = {}
    for number, case_node in enumerate(node.value[:MAX_CASES], start=1):
        case = _case(path, number, case_node, errors)
        if case is None:
            continue
        if case.name in names:
            line = case.line
            message = (
                f"another case (line {names[case.name]}) has the same name {case.name!r}: "
                "give one of them a different `name:`"
            )
            errors.append(EvalError(path, line, "name", message))
            continue
        names[case.name] = case.line
        cases.append(case)
    return EvalSuite(path, tuple(cases), tuple(errors), digest, exists=True)


def compose(path: Path, text: str) -> tuple[yaml.Node | None, EvalError | None]:
    """The YAML node tree of `text`, or the syntax error at its line."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader), None
    except yaml.MarkedYAMLError as exc:
        # The context mark is where the broken construct began (an unclosed quote's line).
        mark = exc.context_mark or exc.problem_mark
        line = mark.line + 1 if mark else 1
        what = f"{exc.context}: {exc.problem}" if exc.context else exc.problem
        return None, EvalError(path, line, "", f"bad YAML: {what or exc}")
    except yaml.YAMLError as exc:
        return None, EvalError(path, 1, "", f"bad YAML: {exc}")


def _broken(path: Path, raw: bytes, error: EvalError) -> EvalSuite:
    digest = hashlib.sha256(raw).hexdigest()[:16] if raw else ""
    return EvalSuite(path, (), (error,), digest, exists=True)


@dataclass(frozen=True)
class _Item:
    """One `key: value` of a case: the value's node (for lines) and its Python value."""

    line: int
    node: yaml.Node
    value: Any


def _case(path: Path, number: int, node: yaml.Node, errors: list[EvalError]) -> EvalCase | None:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        errors.append(EvalError(path, line, "", f"case {number} must be a mapping like 'ask: ...'"))
        return None
    items: dict[str, _Item] = {}
    seen: set[str] = set()
    found: list[EvalError] = []
    for key_node, value_node in node.value:
        key = str(key_node.value)
        key_line = key_node.start_mark.line + 1
        if key not in CASE_KEYS:
            found.append(
                EvalError(path, key_line, key, f"unknown key (known: {', '.join(CASE_KEYS)})")
            )
            continue
        if key in items:
            found.append(
                EvalError(path, key_line, key, f"given twice (first on line {items[key].line})")
            )
            continue
        seen.add(key)
        try:
            value = _value(value_node)
        except yaml.MarkedYAMLError as exc:
            found.append(EvalError(path, key_line, key, f"bad value: {exc.problem}"))
            continue
        items[key] = _Item(key_line, value_node, value)
    turns = _turns(path, line, items.get("ask"), found)
    checks = _checks(path, items, found)
    if not seen & {*CHECK_KEYS, "todo"}:
        found.append(
            EvalError(
                path, line, "", f"case {number} has no check: add one of {', '.join(CHECK_KEYS)}"
            )
        )
    name = _name(path, items.get("name"), turns, found)
    errors.extend(found)
    if found or checks is None or not turns:
        return None
    return EvalCase(number, line, name, turns, checks)


def _value(node: yaml.Node) -> Any:
    """The plain Python value of a node (safe types only; raises yaml.MarkedYAMLError otherwise)."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _text(value: Any) -> str | None:
    """Text as an author writes it: strings, and numbers YAML read as numbers (`contains: 25`)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return None


def _text_list(
    path: Path, key: str, item: _Item, errors: list[EvalError]
) -> list[tuple[str, int]] | None:
    """A string or a list of strings, with each one's line; None after reporting a problem."""
    nodes = item.node.value if isinstance(item.node, yaml.SequenceNode) else [item.node]
    values = item.value if isinstance(item.node, yaml.SequenceNode) else [item.value]
    out = []
    for node, value in zip(nodes, values, strict=True):
        line = node.start_mark.line + 1
        text = _text(value)
        if text is None:
            errors.append(
                EvalError(path, line, key, f"must be text or a list of text, got {_kind(value)}")
            )
            return None
        if not text.strip():
            errors.append(EvalError(path, line, key, "must not be empty"))
            return None
        if len(text) > MAX_TEXT_CHARS:
            errors.append(EvalError(path, line, key, f"longer than {MAX_TEXT_CHARS} characters"))
            return None
        out.append((text, line))
    if not out:
        errors.append(EvalError(path, item.line, key, "must not be an empty list"))
        return None
    return out


def _turns(path: Path, line: int, item: _Item | None, errors: list[EvalError]) -> tuple[str, ...]:
    if item is None:
        errors.append(
            EvalError(path, line, "ask", "missing: the message to send (or a list of turns)")
        )
        return ()
    texts = _text_list(path, "ask", item, errors)
    if texts is None:
        return ()
    if len(texts) > MAX_TURNS:
        errors.append(
            EvalError(path, item.line, "ask", f"{len(texts)} turns; the limit is {MAX_TURNS}")
        )
        return ()
    return tuple(text for text, _ in texts)


def _checks(path: Path, items: dict[str, _Item], errors: list[EvalError]) -> Checks | None:
    before = len(errors)
    contains = _patterns(path, "contains", items.get("contains"), errors)
    not_contains = _patterns(path, "not_contains", items.get("not_contains"), errors)
    cites: tuple[str, ...] = ()
    if "cites" in items:
        texts = _text_list(path, "cites", items["cites"], errors) or []
        cites = tuple(text.strip().strip("/") for text, _ in texts)
    declines = None
    if "declines" in items:
        item = items["declines"]
        if isinstance(item.value, bool):
            declines = item.value
        else:
            errors.append(
                EvalError(path, item.line, "declines", f"must be true or false, got {item.value!r}")
            )
    max_chars = None
    if "max_chars" in items:
        item = items["max_chars"]
        value = item.value
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            max_chars = value
        else:
            errors.append(
                EvalError(
                    path,
                    item.line,
                    "max_chars",
                    f"must be a whole number of at least 1, got {value!r}",
                )
            )
    todo = ""
    if "todo" in items:
        item = items["todo"]
        text = _text(item.value)
        if text is None or not text.strip():
            errors.append(
                EvalError(path, item.line, "todo", "must be text saying what is left to do")
            )
        else:
            todo = text.strip()
    if len(errors) > before:
        return None
    return Checks(contains, not_contains, cites, declines, max_chars, todo)


def _patterns(
    path: Path, key: str, item: _Item | None, errors: list[EvalError]
) -> tuple[Pattern, ...]:
    if item is None:
        return ()
    texts = _text_list(path, key, item, errors)
    out = []
    for text, line in texts or ():
        try:
            out.append(pattern_of(text))
        except ValueError as exc:
            errors.append(EvalError(path, line, key, str(exc)))
    return tuple(out)


def pattern_of(text: str) -> Pattern:
    """`/regex/` as a regular expression, anything else as literal text; both ignore case.

    Raises ValueError naming the problem when the regular expression does not compile.
    """
    is_regex = len(text) > 2 and text.startswith(REGEX_DELIMITER) and text.endswith(REGEX_DELIMITER)
    source = text[1:-1] if is_regex else re.escape(text)
    try:
        return Pattern(text, re.compile(source, re.IGNORECASE))
    except re.error as exc:
        raise ValueError(f"{text!r} is not a valid regular expression: {exc}") from exc


def _name(path: Path, item: _Item | None, turns: tuple[str, ...], errors: list[EvalError]) -> str:
    if item is not None:
        text = _text(item.value)
        if text is None or not text.strip():
            errors.append(EvalError(path, item.line, "name", "must be non-empty text"))
            return ""
        return " ".join(text.split())
    return default_name(turns[-1]) if turns else ""


def default_name(question: str) -> str:
    """The name of a case without `name:`: its (last) question, shortened."""
    flat = " ".join(question.split())
    if len(flat) <= NAME_FROM_ASK_CHARS:
        return flat
    return flat[: NAME_FROM_ASK_CHARS - 1].rstrip() + "…"


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "true/false", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )
