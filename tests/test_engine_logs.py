"""llama.cpp's own log reaches the terminal only when asked for: `bots ask` prints the answer and
nothing of the model loader (nor of the first run's Q8_0 conversion, which says so in one line),
`bots -vv` shows every llama.cpp line as a DEBUG record, and llama.cpp's errors stay ERROR
records. The CLI runs in a subprocess with the real model, in its supervised worker (the default),
so the worker's log is checked too."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bots.engine.llama_native import NativeError, NativeModel
from bots.engine.model_files import default_model_path
from bots.engine.quantize import prepared_model_path

# Lines every llama.cpp model load prints (metadata, vocabulary, weights).
LOADER_MARKERS = ("llama_model_loader", "print_info", "load_tensors")
PROGRESS = "preparing a Q8_0 copy of"
CLI_TIMEOUT_S = 180


def ask(project: Path, cache_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`bots [flags] ask pirate ...` on the test project; the Q8_0 copy is kept in `cache_dir`."""
    env = {**os.environ, "BOTS_MODEL_CACHE_DIR": str(cache_dir), "BOTS_MODEL_N_CTX": "4096"}
    return subprocess.run(
        [
            sys.executable, "-m", "bots", *flags,
            "--personas", str(project / "personas"),
            "--knowledge", str(project / "knowledge"),
            "--data-dir", str(project / "data"),
            "ask", "pirate", "Say hello.", "--max-tokens", "4",
        ],
        cwd=project, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False,
    )  # fmt: skip


def loader_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(m in line for m in LOADER_MARKERS)]


def test_cli_shows_llama_cpp_lines_only_with_debug_logging(project: Path, tmp_path: Path) -> None:
    cache = tmp_path / "model-cache"

    first = ask(project, cache)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip(), "an answer"
    assert loader_lines(first.stderr) == [], first.stderr
    assert "converting to q8_0" not in first.stderr
    assert first.stderr.count(PROGRESS) == 1, first.stderr

    later = ask(project, cache)
    assert later.returncode == 0, later.stderr
    assert loader_lines(later.stderr) == [], later.stderr
    assert PROGRESS not in later.stderr

    debug = ask(project, cache, "-vv")
    assert debug.returncode == 0, debug.stderr
    lines = loader_lines(debug.stderr)
    for marker in LOADER_MARKERS:
        assert any(marker in line for line in lines), f"no {marker} line at -vv"
    assert all(" DEBUG llama.cpp: " in line for line in lines), lines[:5]
    # Only the worker loads the weights (the supervisor reads the vocabulary alone).
    assert any("load_tensors:" in line for line in lines)


def test_llama_cpp_errors_are_error_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 4096)
    caplog.set_level(logging.WARNING, logger="llama.cpp")
    with pytest.raises(NativeError):
        NativeModel(broken, vocab_only=True)
    errors = [r for r in caplog.records if r.name == "llama.cpp" and r.levelno == logging.ERROR]
    assert errors, caplog.text
    assert any("broken.gguf" in r.getMessage() for r in errors)


def test_a_line_sent_in_fragments_is_one_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="llama.cpp")
    prepared_model_path(default_model_path(), tmp_path, n_threads=1)
    tensors = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[")]
    # llama.cpp writes each tensor's name, its conversion and its size in three calls.
    assert tensors and all("size =" in t for t in tensors), tensors[:3]
    assert tensors[0].startswith("[   1/ ")
