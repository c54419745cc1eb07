"""What `bots model pull` was given: a catalogue name, `hf://owner/repo/file.gguf[@revision]`,
a Hub file URL (`<endpoint>/owner/repo/resolve/<revision>/file`) or any other https URL."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from bots.modelhub.catalogue import CatalogueEntry, find_entry

HF_SCHEME = "hf://"
DEFAULT_REVISION = "main"


class AddressError(ValueError):
    """The name is neither in the catalogue nor a Hub address nor a URL; says which exist."""


@dataclass(frozen=True)
class HubFile:
    """A file in a Hugging Face repository at a revision."""

    repo: str
    file: str
    revision: str = DEFAULT_REVISION
    sha256: str = ""  # from the catalogue; the Hub publishes its own in the ETag
    name: str = ""  # the catalogue name, when it came from there

    @property
    def label(self) -> str:
        return self.name or f"{HF_SCHEME}{self.repo}/{self.file}"


@dataclass(frozen=True)
class UrlFile:
    """A GGUF at a plain URL (no Hub metadata: checked against `sha256` when one is given)."""

    url: str
    file: str
    sha256: str = ""

    @property
    def label(self) -> str:
        return self.url


def parse_address(
    text: str, catalogue: tuple[CatalogueEntry, ...], endpoint: str, sha256: str = ""
) -> HubFile | UrlFile:
    """The download `text` names; AddressError when it names nothing `pull` can fetch."""
    entry = find_entry(text, catalogue)
    if entry is not None:
        return HubFile(entry.repo, entry.file, entry.revision, entry.sha256, entry.name)
    if text.startswith(HF_SCHEME):
        return _hub_address(text[len(HF_SCHEME) :], text, sha256)
    if text.startswith(("http://", "https://")):
        return _url_address(text, endpoint, sha256)
    names = ", ".join(e.name for e in catalogue)
    raise AddressError(
        f"{text!r} is not in the catalogue ({names}), nor hf://owner/repo/file.gguf, nor a URL"
    )


def _hub_address(rest: str, text: str, sha256: str) -> HubFile:
    path, _, revision = rest.partition("@")
    parts = path.split("/")
    if len(parts) < 3 or not all(parts):
        raise AddressError(f"{text!r}: expected hf://owner/repo/file.gguf[@revision]")
    return HubFile("/".join(parts[:2]), "/".join(parts[2:]), revision or DEFAULT_REVISION, sha256)


def _url_address(url: str, endpoint: str, sha256: str) -> HubFile | UrlFile:
    split = urlsplit(url)
    hub = urlsplit(endpoint)
    parts = [unquote(p) for p in split.path.split("/") if p]
    base = [p for p in hub.path.split("/") if p]
    on_hub = (split.scheme, split.netloc) == (hub.scheme, hub.netloc) and parts[: len(base)] == base
    rest = parts[len(base) :]
    if on_hub and len(rest) >= 5 and rest[2] in ("resolve", "blob"):
        return HubFile("/".join(rest[:2]), "/".join(rest[4:]), rest[3], sha256)
    if not parts or not parts[-1]:
        raise AddressError(f"{url!r}: the URL names no file")
    return UrlFile(url, parts[-1], sha256)
