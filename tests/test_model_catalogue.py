"""The model catalogue, fit marks, `bots model list --local` over stores laid out as Ollama's and
the Hugging Face cache are, and `bots model use` writing bots.toml."""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path

import pytest

from bots.engine.model_files import default_model_path
from bots.modelhub.catalogue import CatalogueError, find_entry, load_catalogue, parse_catalogue
from bots.modelhub.fit import Machine, estimate
from bots.modelhub.local import scan_machine
from bots.modelhub.settings_file import SettingsFileError, set_model_keys
from bots.settings import ModelSettings
from tests.cli_runner import run_cli

COMMIT = "a" * 40


def fake_gguf(path: Path, size: int = 4096) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + b"\0" * (size - 4))
    return path


def hf_cache_file(cache: Path, repo: str, name: str) -> Path:
    """A file in a Hugging Face cache as huggingface_hub writes one: blob, snapshot link, ref."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    blob = fake_gguf(repo_dir / "blobs" / hashlib.sha256(name.encode()).hexdigest())
    snapshot = repo_dir / "snapshots" / COMMIT / name
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return snapshot


def ollama_model(store: Path, name: str, tag: str) -> Path:
    """A model in Ollama's store: a manifest naming a model layer, its blob by digest."""
    digest = hashlib.sha256(f"{name}:{tag}".encode()).hexdigest()
    blob = fake_gguf(store / "blobs" / f"sha256-{digest}")
    fake_gguf(store / "blobs" / "sha256-template", 10)
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": "sha256:" + "c" * 64},
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}",
             "size": 4096},
            {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:template",
             "size": 10},
        ],
    }))  # fmt: skip
    return blob


def test_the_shipped_catalogue_spans_the_families_and_knows_the_embedded_model() -> None:
    catalogue = load_catalogue()
    families = {e.family for e in catalogue}
    assert {"SmolLM2", "Qwen2.5-Instruct", "Llama-3.2-Instruct"} <= families
    embedded = find_entry("SmolLM2-135M", catalogue)
    assert embedded is not None and embedded.embedded
    data = default_model_path().read_bytes()
    assert embedded.size_bytes == len(data)
    assert embedded.sha256 == hashlib.sha256(data).hexdigest()


def test_a_bad_catalogue_entry_is_named() -> None:
    good = 'name = "m"\nfamily = "f"\nparams = "1B"\nquant = "Q4_K_M"\nsize_bytes = 1\n'
    good += 'licence = "MIT"\nrepo = "o/r"\nfile = "f.gguf"\nrevision = "main"\n'
    good += "layers = 1\nkv_heads = 1\nhead_dim = 1\n"
    assert parse_catalogue("[[model]]\n" + good)[0].name == "m"
    with pytest.raises(CatalogueError, match="model #1: layers must be a int"):
        parse_catalogue("[[model]]\n" + good.replace("layers = 1", 'layers = "1"'))
    with pytest.raises(CatalogueError, match="model #2: unknown key"):
        parse_catalogue("[[model]]\n" + good + "[[model]]\n" + good + "colour = 1\n")
    with pytest.raises(CatalogueError, match="'m' is listed twice"):
        parse_catalogue("[[model]]\n" + good + "[[model]]\n" + good)


def test_fit_counts_the_kv_cache_at_the_configured_context_and_the_q8_copy() -> None:
    entry = find_entry("qwen2.5-7b", load_catalogue())
    assert entry is not None
    roomy = Machine(64 * 10**9, 100 * 10**9)
    small_ctx = estimate(entry, ModelSettings(n_ctx=2048), roomy, here=False)
    big_ctx = estimate(entry, ModelSettings(n_ctx=32768), roomy, here=False)
    assert big_ctx.ram_bytes - small_ctx.ram_bytes == entry.kv_bytes(32768 - 2048)
    on_gpu = estimate(entry, ModelSettings(n_gpu_layers=99), roomy, here=True)
    assert small_ctx.q8_copy and not on_gpu.q8_copy and on_gpu.ram_bytes < small_ctx.ram_bytes
    tight = estimate(entry, ModelSettings(), Machine(8 * 10**9, 1 * 10**9), here=False)
    assert not tight.ram_ok and not tight.disk_ok


def test_local_finds_the_hf_cache_ollama_and_lm_studio(tmp_path: Path) -> None:
    snapshot = hf_cache_file(tmp_path / ".cache" / "huggingface" / "hub", "acme/Tiny-GGUF",
                             "tiny.Q4_K_M.gguf")  # fmt: skip
    blob = ollama_model(tmp_path / ".ollama" / "models", "tiny", "latest")
    lms = fake_gguf(tmp_path / ".lmstudio" / "models" / "acme" / "Tiny-GGUF" / "tiny.Q8_0.gguf")
    fake_gguf(tmp_path / ".lmstudio" / "models" / "acme" / "notes.gguf").write_text("not one")
    found = {(m.source, m.name): m.path for m in scan_machine(environ={}, home=tmp_path)}
    assert found == {
        ("huggingface", "acme/Tiny-GGUF/tiny.Q4_K_M.gguf"): snapshot,
        ("ollama", "tiny:latest"): blob,
        ("lmstudio", "acme/Tiny-GGUF/tiny.Q8_0.gguf"): lms,
    }
    code, out = run_cli(
        tmp_path,
        "model",
        "list",
        "--local",
        env={"HOME": str(tmp_path), "HF_HUB_CACHE": "", "HF_HOME": ""},
    )
    assert code == 0, out
    assert "tiny:latest" in out and str(blob) in out and "acme/Tiny-GGUF/tiny.Q4_K_M.gguf" in out
    assert "embedded" in out and "smollm2-135m" in out


def test_use_writes_model_path_and_keeps_the_rest_of_bots_toml(tmp_path: Path) -> None:
    config = tmp_path / "bots.toml"
    config.write_text('# mine\n[model]\nn_ctx = 4096  # small\npath = "old.gguf"\n\n'
                      '[server]\nport = 9000\n')  # fmt: skip
    model = fake_gguf(tmp_path / "models" / "new.gguf")
    code, out = run_cli(tmp_path, "--config", str(config), "model", "use", str(model))
    assert code == 0, out
    data = tomllib.loads(config.read_text())
    assert data["model"] == {"n_ctx": 4096, "path": str(model)}
    assert data["server"] == {"port": 9000} and config.read_text().startswith("# mine\n")
    code, out = run_cli(tmp_path, "--config", str(config), "model", "use", "smollm2-135m")
    assert code == 0 and tomllib.loads(config.read_text())["model"]["path"] == ""


def test_use_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    config = tmp_path / "bots.toml"
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    env = {"HF_HUB_CACHE": str(tmp_path / "hf")}
    code, out = run_cli(tmp_path, "--config", str(config), "model", "use", str(text), env=env)
    assert code == 1 and "not a GGUF file" in out
    code, out = run_cli(tmp_path, "--config", str(config), "model", "use", "qwen2.5-0.5b", env=env)
    assert code == 1 and "not downloaded yet: bots model pull qwen2.5-0.5b" in out
    code, out = run_cli(tmp_path, "--config", str(config), "model", "use", "gpt-9", env=env)
    assert code == 1 and "not in the catalogue" in out
    assert not config.exists()
    code, out = run_cli(tmp_path, "--config", str(config), "--endpoint", "http://127.0.0.1:9/v1",
                        "model", "use", "gpt-9", env=env)  # fmt: skip
    assert code == 0 and tomllib.loads(config.read_text())["model"] == {"endpoint_model": "gpt-9"}


def test_a_settings_file_that_cannot_be_edited_is_left_alone(tmp_path: Path) -> None:
    config = tmp_path / "bots.toml"
    config.write_text('model.path = "a.gguf"\n')
    with pytest.raises(SettingsFileError, match="set it by hand"):
        set_model_keys(config, {"path": "b.gguf"})
    assert config.read_text() == 'model.path = "a.gguf"\n'
