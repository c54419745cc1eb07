"""A loopback Hugging Face Hub: the file protocol huggingface_hub speaks, on 127.0.0.1.

`HEAD /{owner}/{repo}/resolve/{revision}/{file}` answers as the Hub does for an LFS file: a 302
to the "CDN" (`/cdn/{sha256}`) with `X-Repo-Commit`, `X-Linked-Etag` (the SHA-256) and
`X-Linked-Size`; the CDN serves the bytes with `ETag`, `Accept-Ranges` and ranged GETs (206 +
`Content-Range`). Errors carry the Hub's `X-Error-Code` (`RepoNotFound`, `GatedRepo`,
`EntryNotFound`), which huggingface_hub turns into its own exception classes.

Faults a test can set: `cut_after` (the next GET sends that many body bytes, then drops the
connection), `fail_gets` (that many GETs after it answer 500), `corrupt_at` (one byte served
flipped while the published checksum stays the true one).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 1 << 20


@dataclass
class HubFile:
    data_path: Path
    sha256: str
    size: int
    gated: bool = False


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class FakeHub:
    """The server's state: its files, the faults armed, and every request it saw."""

    files: dict[tuple[str, str], HubFile] = field(default_factory=dict)
    token: str = "hf_test_token"
    cut_after: int | None = None
    fail_gets: int = 0
    corrupt_at: int | None = None
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _server: _Server | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, repo: str, name: str, path: Path, *, gated: bool = False) -> HubFile:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
        entry = HubFile(path, digest.hexdigest(), path.stat().st_size, gated)
        self.files[(repo, name)] = entry
        return entry

    def gets(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "GET"]

    def start(self) -> None:
        hub = self

        class Handler(_Handler):
            state = hub

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a connection cut on purpose (`cut_after`) is not an error worth a traceback


class _Handler(BaseHTTPRequestHandler):
    state: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._record()
        self._resolve(head=True)

    def do_GET(self) -> None:
        self._record()
        if self.path.startswith("/cdn/"):
            self._cdn()
        else:
            self._resolve(head=False)

    def _record(self) -> None:
        self.state.seen.append(
            Seen(
                self.command,
                self.path,
                self.headers.get("Range"),
                self.headers.get("Authorization"),
            )
        )

    def _error(self, status: int, code: str, message: str) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _resolve(self, *, head: bool) -> None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            self._error(404, "RepoNotFound", "Repository not found")
            return
        repo, name = "/".join(parts[:2]), "/".join(parts[4:])
        if not any(r == repo for r, _ in self.state.files):
            self._error(404, "RepoNotFound", "Repository not found")
            return
        entry = self.state.files.get((repo, name))
        if entry is None:
            self._error(404, "EntryNotFound", "Entry not found")
            return
        if entry.gated and self.headers.get("Authorization") != f"Bearer {self.state.token}":
            self._error(401, "GatedRepo", "Access to this model is restricted")
            return
        self.send_response(302)
        # Another host, as the Hub redirects LFS files to its CDN: the client stops there
        # (reading the metadata off this answer) and sends no token on.
        self.send_header("Location", f"http://localhost:{self.state.port}/cdn/{entry.sha256}")
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("X-Linked-Etag", f'"{entry.sha256}"')
        self.send_header("X-Linked-Size", str(entry.size))
        self.send_header("ETag", '"a1b2c3"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _cdn(self) -> None:
        sha = self.path.split("?")[0].rsplit("/", 1)[-1]
        entry = next((f for f in self.state.files.values() if f.sha256 == sha), None)
        if entry is None:
            self._error(404, "EntryNotFound", "No such object")
            return
        if self.state.fail_gets > 0 and self.state.cut_after is None:
            self.state.fail_gets -= 1
            self._error(500, "Internal", "The CDN is down")
            return
        start = 0
        wanted = self.headers.get("Range")
        if wanted and wanted.startswith("bytes=") and wanted.endswith("-"):
            start = int(wanted[len("bytes=") : -1])
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(entry.size - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{entry.sha256}"')
        if start:
            self.send_header("Content-Range", f"bytes {start}-{entry.size - 1}/{entry.size}")
        self.end_headers()
        cut, self.state.cut_after = self.state.cut_after, None
        sent = 0
        with entry.data_path.open("rb") as handle:
            handle.seek(start)
            while block := handle.read(CHUNK):
                block = self._corrupted(block, start + sent)
                if cut is not None and sent + len(block) >= cut:
                    self.wfile.write(block[: cut - sent])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.close()
                    return
                self.wfile.write(block)
                sent += len(block)

    def _corrupted(self, block: bytes, offset: int) -> bytes:
        at = self.state.corrupt_at
        if at is None or not offset <= at < offset + len(block):
            return block
        data = bytearray(block)
        data[at - offset] ^= 0xFF
        return bytes(data)
