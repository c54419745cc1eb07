"""A throwaway PostgreSQL server on a free loopback port, for the tests of several instances.

Debian's PostgreSQL is used (installed here when it is missing and we are root with apt, as the
browser tests do with chromium). `initdb` refuses to run as root, so as root the cluster belongs
to the `postgres` user. The cluster lives in a temporary folder, runs without fsync (the tests
never need durability across a power cut) and is removed at the end of the session.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 30.0


class PostgresMissing(Exception):
    """No PostgreSQL server can be started here; the message says why."""


def _binaries() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _install() -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PostgresMissing("PostgreSQL is not installed and this is not root with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "postgresql"],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PostgresMissing(f"could not install PostgreSQL: {done.stderr[-500:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """One running cluster; `url(db)` names a database on it; `restart()` bounces it."""

    bin_dir: Path
    data_dir: Path
    port: int
    as_user: list[str]
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data_dir.parent / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._pg_ctl("start", "-l", str(self.log), "-o", options)
        self.wait_ready()

    def _pg_ctl(self, *args: str) -> None:
        done = subprocess.run(
            [*self.as_user, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=START_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise PostgresMissing(f"pg_ctl {args[0]} failed: {done.stderr[-1000:]}")

    def wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown: every connection is cut, as in a database restart."""
        if (self.data_dir / "postmaster.pid").exists():
            self._pg_ctl("stop", "-m", "fast")

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_postgres() -> PostgresServer:
    """Install (if we may) and start a throwaway cluster; PostgresMissing says why not."""
    bin_dir = _binaries()
    if bin_dir is None:
        _install()
        bin_dir = _binaries()
        if bin_dir is None:
            raise PostgresMissing("installing postgresql gave no initdb")
    root = Path(tempfile.mkdtemp(prefix="bots-pg-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        # initdb and postgres refuse root: the cluster belongs to the packaged postgres user.
        if shutil.which("runuser") is None:
            raise PostgresMissing("running as root without runuser to become postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    done = subprocess.run(
        [
            *as_user,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresMissing(f"initdb failed: {done.stderr[-1000:]}")
    server = PostgresServer(bin_dir, data, free_port(), as_user)
    server.start()
    return server


def remove(server: PostgresServer) -> None:
    server.stop()
    with contextlib.suppress(OSError):
        shutil.rmtree(server.data_dir.parent)
