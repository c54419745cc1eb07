"""`bots eval --model A --model B`: the same cases on each model, side by side. Two models of a
loopback OpenAI-compatible endpoint (through the real remote engine) answer differently, so one
case passes on one of them only; and two local GGUF files run in turn."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bots.adapters.web.comparison_view import comparison
from bots.engine.model_files import default_model_path
from bots.engine.quantize import prepared_model_path
from tests.cli_runner import run_cli
from tests.conftest import MODEL_CACHE_DIR
from tests.fakes.by_model import answering_by_model
from tests.fakes.projects import persona_md, write, write_hr

ANSWERS = {"big-model": "You get 25 vacation days a year.", "small-model": "Vacation is nice."}


@pytest.fixture
def endpoint() -> Iterator[str]:
    with answering_by_model(ANSWERS) as url:
        yield url


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_hr(tmp_path)
    # One short case for the local models, which really generate.
    brief = persona_md("You answer briefly.", model="{max_tokens: 8}")
    write(tmp_path / "personas" / "brief" / "persona.md", brief)
    write(tmp_path / "personas" / "brief" / "evals.yaml", "- ask: Hello?\n  max_chars: 400\n")
    return tmp_path


def test_two_endpoint_models_side_by_side_one_case_passes_on_one(
    project: Path, endpoint: str
) -> None:
    args = ["--endpoint", endpoint, "eval", "hr", "--model", "big-model", "--model", "small-model"]
    code, out = run_cli(project, *args)
    assert code == 1, out  # a model failed a case
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("CASE"))
    assert header.index("big-model") < header.index("small-model")
    row = next(line for line in lines if line.startswith("hr/knows the number of days"))
    assert row.index("pass") < row.index("FAIL")
    assert any("small-model: " in line and "25" in line for line in lines)
    assert "passing every case: big-model" in out
    code, out = run_cli(project, *args, "--json")
    models = json.loads(out[out.index("{") :])["models"]
    assert [(m["model"], m["passed"], m["cases"]) for m in models] == [
        ("big-model", 2, 2),
        ("small-model", 1, 2),
    ]
    # The workbench's Evals tab shows the last comparison for the persona.
    saved = json.loads((project / "data" / "evals" / "last-comparison.json").read_text())
    html = comparison(saved, "hr")
    assert "Models compared" in html and "big-model" in html and "small-model" in html
    assert html.count("status-fail") == 1 and comparison(saved, "brief") == ""


def test_two_local_models_run_in_turn_and_one_that_does_not_load_says_so(project: Path) -> None:
    q8 = prepared_model_path(default_model_path(), Path(MODEL_CACHE_DIR))
    truncated = project / "truncated.gguf"
    truncated.write_bytes(q8.read_bytes()[:2_000_000])
    models_given = ["--model", "smollm2-135m", "--model", str(q8), "--model", str(truncated)]
    in_process = {"BOTS_MODEL_QUANTIZE_Q8": "false", "BOTS_MODEL_ISOLATE": "false"}
    code, out = run_cli(project, "eval", "brief", *models_given, "--json", env=in_process)
    assert code == 1, out  # the third model failed every case by not loading
    models = json.loads(out[out.index("{") :])["models"]
    assert [m["served"] for m in models] == [default_model_path().name, q8.name, ""], out
    cases = [m["personas"][0]["cases"] for m in models[:2]]
    assert all(len(c) == 1 and c[0]["status"] == "pass" and c[0]["tokens_per_s"] > 0
               for c in cases), cases  # fmt: skip
    assert models[2]["failed"] and "truncated.gguf" in models[2]["load_error"]
