"""Read `persona.md` whole: inside the personas folder, within a size limit, not mid-save.

The loader parses what these functions return; a file being written while it is read raises
PersonaChanging, and the registry waits for the writer's close event to read it again.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import sys
from pathlib import Path

from bots.persona.model import PersonaError, PersonaInvalid

MAX_PERSONA_BYTES = 256 * 1024
# Linux tells whether anyone holds a file open for writing: a read lease is refused then.
LEASES = sys.platform.startswith("linux")


class PersonaChanging(Exception):
    """The file changed while it was read: a writer is at work; its close event reloads it."""


def read_persona_file(path: Path, root: Path | None) -> bytes:
    """The file's bytes, read through its resolved path, inside `root`, not changed meanwhile."""
    try:
        real = path.resolve(strict=True)
        if root is not None and not real.is_relative_to(root.resolve()):
            raise PersonaInvalid(
                [PersonaError(path, 0, "", "refused: it leads outside the personas folder")]
            )
        # O_NOFOLLOW: a symlink swapped in after the check above cannot redirect the read.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            _shut_out_writers(fd, path)
            before = os.fstat(fd)
            if before.st_size > MAX_PERSONA_BYTES:
                message = f"file is {before.st_size} bytes; the limit is {MAX_PERSONA_BYTES}"
                raise PersonaInvalid([PersonaError(path, 0, "", message)])
            raw = handle.read(MAX_PERSONA_BYTES + 1)
            after = os.fstat(fd)
    except OSError as exc:
        raise PersonaInvalid([PersonaError(path, 0, "", f"cannot read: {exc.strerror}")]) from exc
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(
        raw
    ) != after.st_size:
        raise PersonaChanging(str(path))
    return raw


def _shut_out_writers(fd: int, path: Path) -> None:
    """Hold a read lease on `fd` until it is closed, or raise PersonaChanging if a writer has the
    file open. The kernel grants the lease only while nobody has the file open for writing, and
    makes a writer's open wait until the lease is gone, so the bytes read next are a whole save
    (the size and mtime check alone passes a writer that stalls inside its write).
    """
    if not LEASES:
        return
    try:
        # A writer's open breaks the lease by signalling its holder: SIGURG, ignored unless
        # handled, instead of the default SIGIO, which would end the process.
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            raise PersonaChanging(str(path)) from exc
        # No leases on this file (its filesystem, another owner, leases off): the size and
        # mtime check after the read is all there is.


def decode_persona_file(path: Path, raw: bytes) -> str:
    """The bytes as text (UTF-8, a BOM allowed), or PersonaInvalid naming the bad line."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PersonaInvalid([PersonaError(path, line, "", "not UTF-8 text")]) from exc
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise PersonaInvalid([PersonaError(path, line, "", "binary content (NUL byte)")])
    return text
