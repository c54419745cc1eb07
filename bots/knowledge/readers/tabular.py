"""CSV and JSON: records as "name: value" lines, so each value keeps the name that explains it."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

from bots.knowledge.model import Document, Section
from bots.knowledge.readers._common import DocumentError, decode_text

_SNIFF_BYTES = 8192
_CSV_DELIMITERS = ",;\t|"


def read_csv(data: bytes, fallback_title: str) -> Document:
    """Read a CSV file whose first row names the columns; each row becomes a paragraph."""
    text = decode_text(data)
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(
            text[:_SNIFF_BYTES], delimiters=_CSV_DELIMITERS
        )
    except csv.Error:
        dialect = csv.excel
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), dialect))
    except csv.Error as error:
        raise DocumentError(f"not a readable CSV file: {error}") from error
    if not rows:
        return Document(title=fallback_title, sections=())
    header = [name.strip() or f"column {i}" for i, name in enumerate(rows[0], start=1)]
    records = []
    for row in rows[1:]:
        lines = [
            f"{header[i] if i < len(header) else f'column {i + 1}'}: {value.strip()}"
            for i, value in enumerate(row)
            if value.strip()
        ]
        if lines:
            records.append("\n".join(lines))
    section = Section(heading="", text="\n\n".join(records))
    return Document(title=fallback_title, sections=(section,) if records else ())


def read_json(data: bytes, fallback_title: str) -> Document:
    """Read JSON as flattened key paths (`staff[0].name: Ada`), one section per top-level key."""
    try:
        value = json.loads(decode_text(data))
    except (json.JSONDecodeError, RecursionError) as error:
        raise DocumentError(f"not valid JSON: {error}") from error
    if isinstance(value, dict):
        parts = [(str(key), list(_flatten(item, str(key)))) for key, item in value.items()]
    else:
        parts = [("", list(_flatten(value, "")))]
    sections = tuple(
        Section(heading=heading, text="\n".join(lines)) for heading, lines in parts if lines
    )
    return Document(title=fallback_title, sections=sections)


def _flatten(value: object, path: str) -> Iterator[str]:
    """Yield one "path: value" line per scalar inside `value`."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _flatten(item, f"{path}[{index}]")
    else:
        text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
        yield f"{path}: {text}" if path else text
