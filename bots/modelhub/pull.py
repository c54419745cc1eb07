"""`bots model pull`: download a GGUF through huggingface_hub, check it, and only then let it
be used.

The order is the point: the Hub's metadata first (size, revision, checksum; a missing
repository, a gated file or a dead network fails here, before any byte is written), then the
disk-space check, then the transfer into `<etag>.incomplete` (a name nothing loads), resumed
from what an interrupted pull left, then the SHA-256 against the Hub's ETag (and the catalogue's
figure), and only a verified file is moved into the Hugging Face cache layout
(`models--owner--repo/blobs/<etag>`, `snapshots/<commit>/<file>`, `refs/<revision>`), where
huggingface_hub itself and `bots model list --local` find it.

huggingface_hub 2.x resumes a broken transfer only within one call (its partial files are
process-unique and deleted), so the partial file is kept here, under the cache's own
`<etag>.incomplete` name, and handed to its `http_get` with the bytes already there.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get

# Exported lazily, which mypy cannot see.
from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

from bots.modelhub.address import HubFile, UrlFile
from bots.modelhub.fit import free_disk_bytes, human_bytes

DEFAULT_ENDPOINT = "https://huggingface.co"
# Room left on the disk after a download, so the pull never fills it to the last byte.
DISK_MARGIN_BYTES = 64 * 2**20
HASH_BLOCK = 4 * 2**20
PARTIAL_SUFFIX = ".incomplete"


class PullError(Exception):
    """A pull failed; the message says why and what to do, and no usable file was left."""


@dataclass(frozen=True)
class HubAccess:
    """Where and how to download: the endpoint (HF_ENDPOINT), token (HF_TOKEN), folders."""

    cache_dir: Path  # the Hugging Face cache (HF_HUB_CACHE)
    download_dir: Path  # plain-URL downloads
    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = None
    free_space: Callable[[Path], int] = free_disk_bytes


@dataclass(frozen=True)
class Pulled:
    """A verified model file and how it got there."""

    path: Path
    size_bytes: int
    sha256: str
    verified: str  # what the checksum was compared with
    downloaded_bytes: int  # 0 when it was already here
    resumed_from: int
    download_s: float
    verify_s: float


@dataclass(frozen=True)
class _Remote:
    url: str
    size: int | None
    etag: str
    commit: str


def pull(address: HubFile | UrlFile, access: HubAccess) -> Pulled:
    """Download `address` (or find it already here), verify it and return where it lies."""
    if isinstance(address, UrlFile):
        return _pull_url(address, access)
    remote = _metadata(address, access)
    repo_dir = access.cache_dir / ("models--" + address.repo.replace("/", "--"))
    name = remote.etag or hashlib.sha256(remote.url.encode()).hexdigest()
    blob = repo_dir / "blobs" / name
    snapshot = repo_dir / "snapshots" / (remote.commit or address.revision) / address.file
    expected = _expected_sha256(address, remote.etag)
    if blob.is_file() and (remote.size is None or blob.stat().st_size == remote.size):
        verify_s, sha = _verify(blob, address, remote.etag, expected, partial=False)
        _link(blob, snapshot, repo_dir, address.revision, remote.commit)
        return Pulled(
            snapshot, blob.stat().st_size, sha, _against(remote.etag, expected), 0, 0, 0.0, verify_s
        )
    partial = blob.with_name(blob.name + PARTIAL_SUFFIX)
    headers = build_hf_headers(token=access.token)
    if urlsplit(remote.url).netloc != urlsplit(access.endpoint).netloc:
        # A signed CDN address, as huggingface_hub treats it: the token stays on the Hub.
        headers.pop("authorization", None)
    started, resumed = _download(address, remote.url, remote.size, partial, headers, access)
    verify_s, sha = _verify(partial, address, remote.etag, expected, partial=True)
    partial.replace(blob)
    _link(blob, snapshot, repo_dir, address.revision, remote.commit)
    size = blob.stat().st_size
    return Pulled(
        snapshot,
        size,
        sha,
        _against(remote.etag, expected),
        size - resumed,
        resumed,
        started,
        verify_s,
    )


def _metadata(address: HubFile, access: HubAccess) -> _Remote:
    url = hf_hub_url(
        address.repo, address.file, revision=address.revision, endpoint=access.endpoint
    )
    try:
        meta = get_hf_file_metadata(url, token=access.token, endpoint=access.endpoint)
    except Exception as exc:
        raise _explain(address, access, exc) from exc
    return _Remote(meta.location, meta.size, meta.etag or "", meta.commit_hash or "")


def _explain(address: HubFile | UrlFile, access: HubAccess, exc: Exception) -> PullError:
    """The failure in the user's terms: which of them it is, and what to do about it."""
    label = address.label
    if isinstance(exc, GatedRepoError) and isinstance(address, HubFile):
        if access.token:
            return PullError(
                f"{label}: {address.repo} is gated and the token in HF_TOKEN has no "
                "access: accept the model's licence on its Hub page with that account"
            )
        return PullError(
            f"{label}: {address.repo} is gated: accept its licence on the Hub, then "
            "set HF_TOKEN to an access token of that account and pull again"
        )
    if isinstance(exc, RepositoryNotFoundError) and isinstance(address, HubFile):
        return PullError(
            f"{label}: no repository {address.repo} at {access.endpoint} (a private "
            "one needs HF_TOKEN)"
        )
    if isinstance(exc, RevisionNotFoundError) and isinstance(address, HubFile):
        return PullError(f"{label}: {address.repo} has no revision {address.revision!r}")
    if isinstance(exc, RemoteEntryNotFoundError) and isinstance(address, HubFile):
        return PullError(
            f"{label}: {address.repo} has no file {address.file!r} at revision {address.revision!r}"
        )
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "an error"
        return PullError(
            f"{label}: the server answered {status}; run the same pull again to resume"
        )
    if isinstance(exc, httpx2.HTTPError | ConnectionError | TimeoutError):
        return PullError(
            f"{label}: network failure ({type(exc).__name__}: {exc}); run the same "
            "pull again to resume"
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return PullError(
            f"{label}: the disk filled up during the download; free some space and "
            "pull again to resume"
        )
    if isinstance(exc, OSError):
        return PullError(f"{label}: {exc}")
    return PullError(f"{label}: {type(exc).__name__}: {exc}")


def _download(
    address: HubFile | UrlFile,
    url: str,
    size: int | None,
    partial: Path,
    headers: dict[str, str],
    access: HubAccess,
) -> tuple[float, int]:
    """Fill `partial` from `url`, resuming; (seconds, bytes that were already there)."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    resumed = partial.stat().st_size if partial.is_file() else 0
    if size is not None and resumed > size:
        partial.unlink()  # longer than the file: not a part of it
        resumed = 0
    if size is not None:
        needed = size - resumed + DISK_MARGIN_BYTES
        free = access.free_space(partial.parent)
        if free < needed:
            raise PullError(
                f"{address.label}: needs {human_bytes(size - resumed)} more on the "
                f"disk of {partial.parent}, which has {human_bytes(free)} free "
                f"(and {human_bytes(DISK_MARGIN_BYTES)} is kept spare)"
            )
    started = time.perf_counter()
    try:
        with partial.open("ab") as handle:
            http_get(
                url,
                handle,
                resume_size=resumed,
                headers=headers,
                expected_size=size,
                displayed_filename=address.file,
            )
    except Exception as exc:
        raise _explain(address, access, exc) from exc
    return time.perf_counter() - started, resumed


def _expected_sha256(address: HubFile | UrlFile, etag: str) -> str:
    """The published SHA-256: the Hub's ETag of an LFS file, else the catalogue's or the
    `--sha256` given; they must agree where both exist."""
    published = etag if _is_sha256(etag) else ""
    if published and address.sha256 and published != address.sha256.lower():
        raise PullError(
            f"{address.label}: the Hub's checksum {published} differs from the "
            f"catalogue's {address.sha256}: the repository changed; not downloading"
        )
    return published or address.sha256.lower()


def _verify(
    path: Path, address: HubFile | UrlFile, etag: str, expected: str, *, partial: bool
) -> tuple[float, str]:
    """Hash `path`; on a mismatch remove it (so nothing corrupt stays) and raise."""
    started = time.perf_counter()
    sha256 = hashlib.sha256()
    git = hashlib.sha1(f"blob {path.stat().st_size}\0".encode()) if _is_sha1(etag) else None
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK):
            sha256.update(block)
            if git is not None:
                git.update(block)
    got = sha256.hexdigest()
    bad = (expected and got != expected) or (git is not None and git.hexdigest() != etag)
    if bad:
        path.unlink()
        want = expected or etag
        state = "the download" if partial else "the cached copy"
        raise PullError(
            f"{address.label}: checksum mismatch: {state} hashes to {got}, "
            f"{want} was published; it was deleted: pull again"
        )
    return time.perf_counter() - started, got


def _against(etag: str, expected: str) -> str:
    if _is_sha256(etag):
        return "the Hub's SHA-256"
    if _is_sha1(etag):
        return "the Hub's git checksum"
    return "the published SHA-256" if expected else "nothing (no checksum published): size only"


def _link(blob: Path, snapshot: Path, repo_dir: Path, revision: str, commit: str) -> None:
    """Point `snapshots/<commit>/<file>` at the blob and `refs/<revision>` at the commit, as
    huggingface_hub does, so its own lookups find the file."""
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(blob, snapshot.parent)
    if snapshot.is_symlink() or snapshot.exists():
        if snapshot.is_symlink() and os.readlink(snapshot) == target:
            return
        snapshot.unlink()
    snapshot.symlink_to(target)
    if commit and revision != commit:
        ref = repo_dir / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)


def _pull_url(address: UrlFile, access: HubAccess) -> Pulled:
    """A plain URL: the same partial-then-verify steps, into bots' own model folder."""
    target = access.download_dir / address.file
    if target.is_file():
        verify_s, sha = _verify(target, address, "", address.sha256.lower(), partial=False)
        return Pulled(
            target, target.stat().st_size, sha, _against("", address.sha256), 0, 0, 0.0, verify_s
        )
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    size = _url_size(address, access)
    started, resumed = _download(address, address.url, size, partial, {}, access)
    verify_s, sha = _verify(partial, address, "", address.sha256.lower(), partial=True)
    partial.replace(target)
    final = target.stat().st_size
    return Pulled(
        target,
        final,
        sha,
        _against("", address.sha256),
        final - resumed,
        resumed,
        started,
        verify_s,
    )


def _url_size(address: UrlFile, access: HubAccess) -> int | None:
    try:
        response = httpx2.head(address.url, follow_redirects=True, timeout=30)
        response.raise_for_status()
    except Exception as exc:
        raise _explain(address, access, exc) from exc
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text.lower())


def _is_sha1(text: str) -> bool:
    return len(text) == 40 and all(c in "0123456789abcdef" for c in text.lower())
