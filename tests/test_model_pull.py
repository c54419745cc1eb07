"""`bots model pull` through the real huggingface_hub against a loopback Hub serving the shipped
GGUF: a complete download that loads and answers, a resumed transfer, a corrupted byte, an
unknown repository, a gated file, a full disk; all via `bots model pull` or `pull()`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download

from bots.engine.model_files import default_model_path
from bots.modelhub.address import HubFile
from bots.modelhub.catalogue import find_entry, load_catalogue
from bots.modelhub.pull import HubAccess, PullError, pull
from tests.cli_runner import run_cli
from tests.fakes.hf_hub import COMMIT, FakeHub

REPO = "acme/tiny-chat-GGUF"
FILE = "tiny-chat.Q4_1.gguf"


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    server = FakeHub()
    server.add(REPO, FILE, default_model_path())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def hub_env(hub: FakeHub, cache: Path, **more: str) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(cache),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", **more}  # fmt: skip


def access(hub: FakeHub, cache: Path, **fields: object) -> HubAccess:
    return HubAccess(
        cache_dir=cache, download_dir=cache.parent / "downloads", endpoint=hub.endpoint, **fields
    )  # type: ignore[arg-type]


def usable_files(cache: Path) -> list[Path]:
    """GGUF files a user could point model.path at: anything not marked incomplete."""
    return [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".incomplete")]


def test_pull_downloads_verifies_and_the_model_answers(project: Path, hub: FakeHub) -> None:
    cache = project / "hf"
    code, out = run_cli(project, "model", "pull", f"hf://{REPO}/{FILE}",
                        env=hub_env(hub, cache))  # fmt: skip
    assert code == 0, out
    assert "verified against the Hub's SHA-256" in out
    path = Path(out.strip().splitlines()[-2])
    assert path.read_bytes()[:4] == b"GGUF"
    # Laid out as huggingface_hub lays out its cache: its own offline lookup finds the file.
    offline = hf_hub_download(REPO, FILE, cache_dir=cache, local_files_only=True)
    assert Path(offline) == path
    assert (cache / "models--acme--tiny-chat-GGUF" / "refs" / "main").read_text() == COMMIT
    # The second pull only checks the copy it has.
    code, again = run_cli(project, "model", "pull", f"hf://{REPO}/{FILE}", env=hub_env(hub, cache))
    assert code == 0 and "already here" in again
    assert len(hub.gets()) == 1
    no_copy = {"BOTS_MODEL_QUANTIZE_Q8": "false", "BOTS_MODEL_ISOLATE": "false"}
    ask = ["--model", str(path), "ask", "pirate", "Say hello.", "--max-tokens", "8"]
    code, answer = run_cli(project, *ask, env=no_copy)
    assert code == 0 and answer.strip(), answer


def test_an_interrupted_pull_is_resumed_by_the_next(tmp_path: Path, hub: FakeHub) -> None:
    cache = tmp_path / "hf"
    address = HubFile(REPO, FILE)
    hub.cut_after = 30_000_000
    hub.fail_gets = 1  # huggingface_hub retries once at once; the CDN is still down then
    with pytest.raises(PullError, match="run the same pull again to resume"):
        pull(address, access(hub, cache))
    assert usable_files(cache) == []
    partial = next(cache.rglob("*.incomplete"))
    # What reached the disk before the cut (huggingface_hub writes in 10 MiB chunks).
    kept = partial.stat().st_size
    assert 0 < kept <= 30_000_000
    pulled = pull(address, access(hub, cache))
    assert pulled.resumed_from == kept
    assert hub.gets()[-1].range == f"bytes={kept}-"
    assert pulled.path.read_bytes() == default_model_path().read_bytes()
    assert not partial.exists()


def test_a_corrupted_byte_fails_verification_and_leaves_nothing(
    tmp_path: Path, hub: FakeHub
) -> None:
    cache = tmp_path / "hf"
    hub.corrupt_at = 5_000_000
    with pytest.raises(PullError, match=r"checksum mismatch.*deleted"):
        pull(HubFile(REPO, FILE), access(hub, cache))
    assert usable_files(cache) == []
    assert list(cache.rglob("*.incomplete")) == []


def test_unknown_names_repositories_and_files_say_which(project: Path, hub: FakeHub) -> None:
    env = hub_env(hub, project / "hf")
    code, out = run_cli(project, "model", "pull", "no-such-model", env=env)
    assert code == 1 and "not in the catalogue (smollm2-135m" in out
    code, out = run_cli(project, "model", "pull", "hf://acme/missing/x.gguf", env=env)
    assert code == 1 and "no repository acme/missing at" in out
    code, out = run_cli(project, "model", "pull", f"hf://{REPO}/other.gguf", env=env)
    assert code == 1 and "has no file 'other.gguf'" in out


def test_a_gated_file_needs_a_token(project: Path, hub: FakeHub) -> None:
    hub.add("acme/gated-GGUF", FILE, default_model_path(), gated=True)
    cache = project / "hf"
    code, out = run_cli(project, "model", "pull", f"hf://acme/gated-GGUF/{FILE}",
                        env=hub_env(hub, cache))  # fmt: skip
    assert code == 1 and "is gated" in out and "HF_TOKEN" in out
    assert not any(s.method == "GET" for s in hub.seen)
    code, out = run_cli(project, "model", "pull", f"hf://acme/gated-GGUF/{FILE}",
                        env=hub_env(hub, cache, HF_TOKEN="hf_wrong"))  # fmt: skip
    assert code == 1 and "has no access" in out
    code, out = run_cli(project, "model", "pull", f"hf://acme/gated-GGUF/{FILE}",
                        env=hub_env(hub, cache, HF_TOKEN=hub.token))  # fmt: skip
    assert code == 0, out
    assert hub.gets()[-1].authorization is None  # the token is not sent on to the CDN


def test_too_little_disk_fails_before_the_first_byte(tmp_path: Path, hub: FakeHub) -> None:
    cache = tmp_path / "hf"
    small = access(hub, cache, free_space=lambda path: 50_000_000)
    with pytest.raises(PullError, match=r"needs 98 MB more on the disk .* 50 MB free"):
        pull(HubFile(REPO, FILE), small)
    assert hub.gets() == []
    assert usable_files(cache) == []


def test_a_catalogue_name_is_pulled_and_checked_against_the_catalogue_too(
    project: Path, hub: FakeHub
) -> None:
    entry = find_entry("smollm2-135m", load_catalogue())
    assert entry is not None
    elsewhere = project / "other.gguf"
    elsewhere.write_bytes(default_model_path().read_bytes()[:1_000_000])
    hub.add(entry.repo, entry.file, elsewhere)  # the repository changed since the catalogue
    cache = project / "hf"
    code, out = run_cli(project, "model", "pull", entry.name, env=hub_env(hub, cache))
    assert code == 1 and "differs from the catalogue's" in out and hub.gets() == []
    hub.add(entry.repo, entry.file, default_model_path())
    code, out = run_cli(project, "model", "pull", entry.name, env=hub_env(hub, cache))
    assert code == 0 and "verified against the Hub's SHA-256" in out, out
    code, out = run_cli(project, "model", "list", "--json", env=hub_env(hub, cache))
    rows = {r["name"]: r for r in json.loads(out)["catalogue"]}
    assert rows["smollm2-135m"]["here"] and not rows["qwen2.5-0.5b"]["here"]


def test_no_network_fails_before_writing_and_says_to_retry(tmp_path: Path) -> None:
    dead = HubAccess(cache_dir=tmp_path / "hf", download_dir=tmp_path / "dl",
                     endpoint="http://127.0.0.1:9")  # fmt: skip
    with pytest.raises(PullError, match=r"network failure.*run the same pull again"):
        pull(HubFile(REPO, FILE), dead)
    assert not (tmp_path / "hf").exists()
