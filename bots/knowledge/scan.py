"""Which files of a folder are knowledge: the walk, the ignore rules and the size limit."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bots.knowledge.readers import is_supported

_MIB = 1024 * 1024
MAX_DOCUMENT_BYTES = 20 * _MIB
# Files of a persona folder that are not knowledge (the persona itself, its evaluations) and the
# scratch files editors write beside the file being saved (Vim probes with "4913").
IGNORED_NAMES = frozenset({"persona.md", "evals.yaml", "4913"})
_IGNORED_SUFFIXES = (".swp", ".swx", ".swo", "~", ".tmp")
# Sphinx's HTML output carries every page a second time as `_sources/<page>.rst.txt`; a folder
# holding `objects.inv` is such an output, and its `_sources` would double every hit.
_SPHINX_MARKER = "objects.inv"
_SPHINX_SOURCES = "_sources"


@dataclass(frozen=True)
class Candidate:
    """A file to index: its path relative to the root ("/" separated) and its stat."""

    rel: str
    path: Path
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ScanResult:
    """The files to index, sorted by path, and the files left out for a reason worth telling."""

    candidates: tuple[Candidate, ...]
    skipped: tuple[str, ...]


def is_ignored_name(name: str) -> bool:
    """Whether a file or folder of this name is never knowledge, wherever it is."""
    return (
        name.startswith(".")
        or name in IGNORED_NAMES
        or name.endswith(_IGNORED_SUFFIXES)
        or name.startswith("#")  # Emacs auto-save files, #name#
    )


def scan(root: Path) -> ScanResult:
    """List the knowledge files under `root`.

    Hidden files, editor temporaries, persona.md, evals.yaml and unsupported types are left out
    silently. Reported as skipped: files over MAX_DOCUMENT_BYTES, and symbolic links that lead
    outside `root` (refused and never opened). A link to a folder inside `root` is not followed:
    that folder is indexed under its own path already.
    """
    candidates: list[Candidate] = []
    skipped: list[str] = []
    if not root.is_dir():
        return ScanResult((), ())
    real_root = root.resolve()
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as error:
            skipped.append(f"{prefix or '.'}: cannot list the folder: {error.strerror}")
            continue
        sphinx_output = any(entry.name == _SPHINX_MARKER for entry in entries)
        for entry in entries:
            rel = prefix + entry.name
            if is_ignored_name(entry.name):
                continue
            try:
                if entry.is_symlink():
                    target = Path(entry.path).resolve()
                    if not target.is_relative_to(real_root):
                        skipped.append(f"{rel}: refused: a link to {target}, outside the folder")
                        continue
                    if not target.exists():
                        skipped.append(f"{rel}: a broken link")
                        continue
                if entry.is_dir():
                    if entry.is_symlink():
                        continue
                    if sphinx_output and entry.name == _SPHINX_SOURCES:
                        skipped.append(f"{rel}/: Sphinx page sources, the same text as the pages")
                        continue
                    pending.append((Path(entry.path), rel + "/"))
                    continue
                if not entry.is_file() or not is_supported(entry.name):
                    continue
                stat = entry.stat()
            except OSError as error:
                skipped.append(f"{rel}: cannot read: {error.strerror}")
                continue
            if stat.st_size > MAX_DOCUMENT_BYTES:
                skipped.append(
                    f"{rel}: too large ({stat.st_size / _MIB:.1f} MiB; "
                    f"the limit is {MAX_DOCUMENT_BYTES / _MIB:.0f} MiB)"
                )
                continue
            candidates.append(Candidate(rel, Path(entry.path), stat.st_size, stat.st_mtime_ns))
    candidates.sort(key=lambda c: c.rel)
    skipped.sort()
    return ScanResult(tuple(candidates), tuple(skipped))
