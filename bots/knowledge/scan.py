"""Which files of a folder are knowledge: the walk, the ignore rules and the size limit."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import bots.knowledge.hygiene as hygiene
from bots.knowledge.model import Exclusion
from bots.knowledge.overrides import Overrides, load_overrides
from bots.knowledge.readers import is_supported

_MIB = 1024 * 1024
MAX_DOCUMENT_BYTES = 20 * _MIB
# Files of a persona folder that are not knowledge (the persona itself, its evaluations) and the
# scratch files editors write beside the file being saved (Vim probes with "4913").
IGNORED_NAMES = frozenset({"persona.md", "evals.yaml", "4913"})
_IGNORED_SUFFIXES = (".swp", ".swx", ".swo", "~", ".tmp")


@dataclass(frozen=True)
class Candidate:
    """A file to index: its path relative to the root ("/" separated) and its stat."""

    rel: str
    path: Path
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ScanResult:
    """The files to index, sorted by path; the files that could not be (problems); and what was
    left out as not content, by the site-build rules or `knowledge.yaml`."""

    candidates: tuple[Candidate, ...]
    skipped: tuple[str, ...]
    excluded: tuple[Exclusion, ...] = ()
    overrides: Overrides = field(default_factory=Overrides)  # what knowledge.yaml says


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
    silently. Reported as skipped: files over MAX_DOCUMENT_BYTES, symbolic links that lead
    outside `root` (refused and never opened), and problems in `root/knowledge.yaml`. Reported as
    excluded: what `hygiene` finds is not content, and what `knowledge.yaml` leaves out. A link to
    a folder inside `root` is not followed: that folder is indexed under its own path already.
    """
    candidates: list[Candidate] = []
    excluded: list[Exclusion] = []
    if not root.is_dir():
        return ScanResult((), ())
    overrides, skipped = load_overrides(root)
    real_root = root.resolve()
    # (folder, its path with a trailing "/", inside a site build, why its files are not content)
    pending: list[tuple[Path, str, bool, str | None]] = [(root, "", False, None)]
    while pending:
        folder, prefix, in_build, inherited = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as error:
            skipped.append(f"{prefix or '.'}: cannot list the folder: {error.strerror}")
            continue
        in_build = in_build or hygiene.marks_build(entry.name for entry in entries)
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
                    rule = hygiene.folder_reason(entry.name, in_build) or inherited
                    reason = overrides.verdict(rel + "/", rule)
                    if reason == hygiene.EXCLUDED or (
                        reason and not overrides.may_include_below(rel + "/")
                    ):
                        excluded.append(Exclusion(rel + "/", reason))
                    else:
                        # Walked for the files `include` names; the others keep the folder's rule.
                        pending.append((Path(entry.path), rel + "/", in_build, reason))
                    continue
                if not entry.is_file() or not is_supported(entry.name):
                    continue
                reason = overrides.verdict(
                    rel, hygiene.file_reason(entry.name, in_build) or inherited
                )
                if reason:
                    excluded.append(Exclusion(rel, reason))
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
    excluded.sort(key=lambda e: e.rel)
    return ScanResult(tuple(candidates), tuple(skipped), tuple(excluded), overrides)
