"""Parse and validate `persona.md`: YAML front matter (settings) + Markdown body (instructions)."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bots.persona.adapter import AdapterCheck, AdapterProblem, PersonaAdapter, parse_adapter
from bots.persona.file_read import decode_persona_file, read_persona_file
from bots.persona.model import (
    PERSONA_FILE,
    Access,
    Persona,
    PersonaError,
    PersonaInvalid,
    PinnedDocument,
    PinnedDocuments,
    PinnedProblem,
    Sampling,
)

FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*\r?\n?", re.DOTALL | re.MULTILINE)
PERSONA_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class _Field:
    kind: str  # "str", "bool", "float", "int", "strlist", "enum", "map", "any"
    doc: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    children: tuple[tuple[str, _Field], ...] = ()


_CHANNELS = (("channels", _Field("strlist", "channel ids where the persona answers unasked")),)
FIELDS: dict[str, _Field] = {
    "name": _Field("str", "display name"),
    "description": _Field("str", "one line shown in persona lists"),
    "avatar": _Field("str", "image file in the persona folder"),
    "greeting": _Field("str", "first message of a new chat"),
    "starters": _Field("strlist", "suggested questions"),
    "knowledge": _Field("strlist", "shared libraries under knowledge/"),
    "pinned": _Field("strlist", "documents put whole into every prompt"),
    "grounding": _Field("enum", "strict or open", choices=("strict", "open")),
    "citations": _Field("bool", "name source documents in replies"),
    "adapter": _Field("any", "LoRA adapter: NAME@VERSION or a .gguf file (see persona.adapter)"),
    "model": _Field(
        "map",
        "generation settings",
        children=(
            ("temperature", _Field("float", "sampling temperature", low=0.0, high=2.0)),
            ("max_tokens", _Field("int", "reply length limit in tokens", low=1, high=8192)),
            ("top_p", _Field("float", "nucleus sampling", low=0.0, high=1.0)),
            ("repeat_penalty", _Field("float", "repetition penalty", low=0.5, high=2.0)),
        ),
    ),
    "discord": _Field("map", "Discord settings", children=_CHANNELS),
    "slack": _Field("map", "Slack settings", children=_CHANNELS),
    "access": _Field(
        "map",
        "who may talk to the persona",
        children=(
            ("users", _Field("strlist", "user ids")),
            ("roles", _Field("strlist", "role ids or names")),
        ),
    ),
}


def valid_persona_id(name: str) -> bool:
    """Folder names usable as persona ids (and as OpenAI model names)."""
    return bool(PERSONA_ID.match(name))


def load_persona(
    folder: Path,
    known_libraries: Collection[str],
    *,
    root: Path | None = None,
    clock: Callable[[], float] = time.time,
    pinned: PinnedDocuments | None = None,
    adapters: AdapterCheck | None = None,
) -> Persona:
    """Read `folder/persona.md` into a snapshot, or raise PersonaInvalid listing every problem.

    With `pinned`, the documents the persona pins are read into the snapshot (and must fit);
    without it only their names are checked. An `adapter:` is checked with `adapters`.
    """
    path = folder / PERSONA_FILE
    raw = read_persona_file(path, root)
    text = decode_persona_file(path, raw)
    match = FRONT_MATTER.match(text)
    header, body, offset = (
        ("", text, 0) if match is None else (match.group(1), text[match.end() :], 1)
    )
    if match is None and text.lstrip().startswith("---"):
        raise PersonaInvalid(
            [PersonaError(path, 1, "", "front matter opened with --- is never closed")]
        )
    errors: list[PersonaError] = []
    values = _parse_header(path, header, offset, errors)
    checked = _check(path, values, FIELDS, "", errors)
    instructions = body.strip()
    if not instructions:
        body_line = text[: len(text) - len(body)].count("\n") + 1
        errors.append(PersonaError(path, body_line, "", "the instructions body is empty"))
    _check_references(path, folder, checked, values, known_libraries, errors)
    documents = _pinned(path, folder, checked, values.get("pinned"), pinned, errors)
    adapter = None
    if "adapter" in checked:
        try:
            adapter = parse_adapter(checked["adapter"], folder, adapters)
        except AdapterProblem as exc:
            errors.append(PersonaError(path, values["adapter"].line, "adapter", str(exc)))
    if errors:
        raise PersonaInvalid(errors)
    return _snapshot(folder, checked, instructions, raw, clock(), documents, adapter)


def content_hash(raw: bytes) -> str:
    """Short content hash shown in /status and used to skip no-op saves."""
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class _Value:
    value: Any
    line: int
    node: yaml.Node
    offset: int


def _parse_header(
    path: Path, header: str, offset: int, errors: list[PersonaError]
) -> dict[str, _Value]:
    if not header.strip():
        return {}
    try:
        node = yaml.compose(header, Loader=yaml.SafeLoader)
        data = yaml.safe_load(header)
    except yaml.MarkedYAMLError as exc:
        # The context mark is where the broken construct began (an unclosed bracket's line),
        # which is where the author must look; the problem mark is often the end of the block.
        mark = exc.context_mark or exc.problem_mark
        line = offset + (mark.line + 1 if mark else 1)
        what = f"{exc.context}: {exc.problem}" if exc.context else exc.problem
        errors.append(PersonaError(path, line, "", f"bad YAML: {what or exc}"))
        return {}
    except yaml.YAMLError as exc:
        errors.append(PersonaError(path, offset + 1, "", f"bad YAML: {exc}"))
        return {}
    if node is None or data is None:
        return {}
    if not isinstance(node, yaml.MappingNode) or not isinstance(data, dict):
        errors.append(
            PersonaError(path, offset + 1, "", "front matter must be a mapping of key: value")
        )
        return {}
    return _values(node, data, offset)


def _values(node: yaml.MappingNode, data: dict[Any, Any], offset: int) -> dict[str, _Value]:
    out: dict[str, _Value] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        line = offset + key_node.start_mark.line + 1
        out[key] = _Value(data.get(key_node.value), line, value_node, offset)
    return out


def _check(
    path: Path,
    values: dict[str, _Value],
    fields: dict[str, _Field],
    prefix: str,
    errors: list[PersonaError],
) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for key, item in values.items():
        name = prefix + key
        spec = fields.get(key)
        if spec is None:
            known = ", ".join(fields)
            errors.append(PersonaError(path, item.line, name, f"unknown key (known: {known})"))
            continue
        problem, value = _coerce(spec, item)
        if problem:
            errors.append(PersonaError(path, item.line, name, problem))
        elif spec.kind == "map":
            assert isinstance(item.node, yaml.MappingNode)
            children = _values(item.node, value, item.offset) if value else {}
            checked[key] = _check(path, children, dict(spec.children), name + ".", errors)
        else:
            checked[key] = value
    return checked


def _coerce(spec: _Field, item: _Value) -> tuple[str, Any]:
    value = item.value
    kind = spec.kind
    if kind == "any":  # checked by its own parser
        return "", value
    if value is None:
        return ("", {} if kind == "map" else None) if kind in ("map", "strlist") else ("", None)
    if kind == "str":
        return (
            ("", value) if isinstance(value, str) else (f"must be text, got {_type(value)}", None)
        )
    if kind == "bool":
        return (
            ("", value)
            if isinstance(value, bool)
            else (f"must be true or false, got {value!r}", None)
        )
    if kind == "enum":
        if value in spec.choices:
            return "", value
        return f"must be one of {', '.join(spec.choices)}, got {value!r}", None
    if kind in ("float", "int"):
        ok = isinstance(value, int) if kind == "int" else isinstance(value, int | float)
        if not ok or isinstance(value, bool):
            return f"must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}", None
        if (spec.low is not None and value < spec.low) or (
            spec.high is not None and value > spec.high
        ):
            return f"must be between {spec.low:g} and {spec.high:g}, got {value!r}", None
        return "", value
    if kind == "strlist":
        if isinstance(value, str | int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not all(
            isinstance(v, str | int) and not isinstance(v, bool) for v in value
        ):
            return f"must be a list of text, got {_type(value)}", None
        return "", tuple(str(v) for v in value)
    if not isinstance(value, dict):
        return f"must be a mapping of key: value, got {_type(value)}", None
    return "", value


def _type(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false"}.get(
        type(value), type(value).__name__
    )


def _check_references(
    path: Path,
    folder: Path,
    checked: dict[str, Any],
    values: dict[str, _Value],
    known_libraries: Collection[str],
    errors: list[PersonaError],
) -> None:
    for name in checked.get("knowledge") or ():
        line = values["knowledge"].line
        if name in (".", "..") or "/" in name or "\\" in name or name.startswith("~"):
            errors.append(PersonaError(path, line, "knowledge", f"{name!r} is not a library name"))
        elif name not in known_libraries:
            have = ", ".join(sorted(known_libraries)) or "none"
            errors.append(
                PersonaError(path, line, "knowledge", f"unknown library {name!r} (have: {have})")
            )
    avatar = checked.get("avatar")
    if avatar:
        line = values["avatar"].line
        target = (folder / avatar).resolve()
        if not target.is_relative_to(folder.resolve()):
            errors.append(
                PersonaError(path, line, "avatar", f"{avatar!r} is outside the persona folder")
            )
        elif not target.is_file():
            errors.append(PersonaError(path, line, "avatar", f"{avatar!r}: no such file"))


def _pinned(
    path: Path,
    folder: Path,
    checked: dict[str, Any],
    value: _Value | None,
    reader: PinnedDocuments | None,
    errors: list[PersonaError],
) -> tuple[PinnedDocument, ...]:
    """The pinned documents, read; each problem is an error on the line of its entry."""
    names: tuple[str, ...] = checked.get("pinned") or ()
    if value is None or not names:
        return ()
    items = value.node.value if isinstance(value.node, yaml.SequenceNode) else [value.node]
    libraries = checked.get("knowledge") or ()
    documents: list[PinnedDocument] = []
    for name, item in zip(names, items, strict=False):
        line = value.offset + item.start_mark.line + 1
        parts = name.split("/")
        if not name.strip() or name.startswith(("/", "~")) or ".." in parts or "\\" in name:
            message = f"{name!r} must be a path inside the persona folder or a library it names"
            errors.append(PersonaError(path, line, "pinned", message))
            continue
        if reader is None:
            continue
        try:
            documents.append(reader.read(folder, libraries, name))
        except PinnedProblem as exc:
            errors.append(PersonaError(path, line, "pinned", f"{name!r}: {exc}"))
    if reader is not None and len(documents) == len(names):
        problem = reader.problem(documents)
        if problem:
            errors.append(PersonaError(path, value.line, "pinned", problem))
    return tuple(documents)


def _snapshot(
    folder: Path,
    checked: dict[str, Any],
    instructions: str,
    raw: bytes,
    now: float,
    pinned: tuple[PinnedDocument, ...] = (),
    adapter: PersonaAdapter | None = None,
) -> Persona:
    model = checked.get("model") or {}
    access = checked.get("access") or {}
    avatar = checked.get("avatar")
    return Persona(
        id=folder.name,
        folder=folder,
        instructions=instructions,
        content_hash=content_hash(raw),
        loaded_at=now,
        name=checked.get("name") or "",
        description=checked.get("description") or "",
        avatar=(folder / avatar) if avatar else None,
        greeting=checked.get("greeting") or "",
        starters=checked.get("starters") or (),
        knowledge=checked.get("knowledge") or (),
        grounding=checked.get("grounding") or "open",
        citations=bool(checked.get("citations")),
        sampling=Sampling(**{k: v for k, v in model.items() if v is not None}),
        discord_channels=(checked.get("discord") or {}).get("channels") or (),
        slack_channels=(checked.get("slack") or {}).get("channels") or (),
        access=Access(users=access.get("users") or (), roles=access.get("roles") or ()),
        pinned=pinned,
        adapter=adapter,
    )
