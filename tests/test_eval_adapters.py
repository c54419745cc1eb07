"""`bots eval PERSONA --adapter 3`: the persona's cases without and with an adapter, side by side,
as `bots eval --model A --model B` shows models. Through a loopback vLLM-style endpoint (the
adapter's name is the model, answered differently) one case passes with the adapter only; and on
the real model with a real LoRA file the two columns answer differently."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bots.adapters.web.comparison_view import adapter, comparison
from bots.engine.adapter_files import file_sha256
from bots.engine.model_files import default_model_path
from bots.persona.adapter import PersonaAdapter
from bots.persona.model import Persona
from tests.cli_runner import run_cli
from tests.fakes.by_model import answering_by_model
from tests.fakes.lora import write_version
from tests.fakes.projects import persona_md, write, write_hr

ANSWERS = {"hr@3": "You get 25 vacation days a year.", "base": "Vacation is nice."}


@pytest.fixture
def endpoint() -> Iterator[str]:
    with answering_by_model(ANSWERS) as url:
        yield url


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_hr(tmp_path)
    write_version(
        tmp_path / "data" / "adapters", "hr", 3, base_sha256=file_sha256(default_model_path())
    )
    return tmp_path


def test_with_and_without_the_adapter_side_by_side_one_case_passes_with_it_only(
    project: Path, endpoint: str
) -> None:
    args = ["--endpoint", endpoint, "eval", "hr", "--model", "base", "--adapter", "3"]
    code, out = run_cli(project, *args)
    assert code == 1, out  # without the adapter a case fails
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("CASE"))
    assert header.index("none") < header.index("3")
    row = next(line for line in lines if line.startswith("hr/knows the number of days"))
    assert row.index("FAIL") < row.index("pass")
    assert "passing every case: 3" in out

    code, out = run_cli(project, *args, "--json")
    document = json.loads(out[out.index("{") :])
    assert document["compared"] == "adapters"
    assert [(m["model"], m["passed"], m["cases"]) for m in document["models"]] == [
        ("none", 1, 2),
        ("3", 2, 2),
    ]
    # The workbench's Evals tab shows the last comparison, headed as one of adapters.
    saved = json.loads((project / "data" / "evals" / "last-comparison.json").read_text())
    html = comparison(saved, "hr")
    assert "Adapters compared" in html and "--adapter" in html and html.count("status-fail") == 1


def test_an_adapter_that_cannot_serve_is_reported_in_its_column(
    project: Path, endpoint: str
) -> None:
    args = ["--endpoint", endpoint, "eval", "hr", "--model", "base", "--adapter", "7"]
    code, out = run_cli(project, *args)
    assert code == 1
    assert "7: could not load: hr:" in out and "hr/7/adapter.gguf: no such file" in out


def test_on_the_real_model_the_adapter_column_answers_differently(project: Path) -> None:
    write(
        project / "personas" / "hr" / "evals.yaml",
        "- ask: How many vacation days do I get?\n  max_chars: 2000\n",
    )
    write(
        project / "personas" / "hr" / "persona.md",
        persona_md("You answer HR questions.", model="{max_tokens: 12}"),
    )
    code, out = run_cli(project, "--engine", "batched", "eval", "hr", "--adapter", "3", "--json")
    assert code == 0, out
    columns = json.loads(out[out.index("{") :])["models"]
    answers = [m["personas"][0]["cases"][0]["answer"] for m in columns]
    assert [m["model"] for m in columns] == ["none", "3"]
    assert answers[0] and answers[1] and answers[0] != answers[1]
    assert columns[1]["served"].endswith("+ 3")


def test_the_workbench_shows_the_persona_adapter_and_its_manifest(tmp_path: Path) -> None:
    chosen = PersonaAdapter("hr@3", tmp_path / "adapter.gguf", 0.5, (("version", "3"),))
    persona = Persona("hr", tmp_path, "x", "h", 0.0, adapter=chosen)
    html = adapter(persona)
    assert "hr@3" in html and "scale 0.5" in html and "<td>version</td><td>3</td>" in html
    assert adapter(Persona("hr", tmp_path, "x", "h", 0.0)) == ""
