"""The `bots` command through click's runner: new, check, ask --json, chat, where options go."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bots.cli import main
from tests.cli_runner import run_cli as run


def test_new_scaffolds_a_persona_that_checks_clean(project: Path) -> None:
    code, out = run(project, "new", "tutor")
    assert code == 0 and "personas/tutor/persona.md" in out
    assert (project / "personas" / "tutor" / "persona.md").is_file()
    code, out = run(project, "check")
    assert code == 0, out
    code, out = run(project, "new", "tutor")
    assert code != 0 and "already exists" in out


def test_check_reports_file_line_key_and_exits_1(project: Path) -> None:
    path = project / "personas" / "pirate" / "persona.md"
    path.write_text("---\nname: Pete\nknowledge: [nope]\n---\nArr.\n")
    code, out = run(project, "check")
    assert code == 1
    assert f"{path}:3: knowledge: unknown library 'nope'" in out


def test_ask_json_prints_answer_sources_and_timings(project: Path) -> None:
    code, out = run(
        project,
        "ask",
        "librarian",
        "How many vacation days per year?",
        "--json",
        "--temperature",
        "0",
        "--max-tokens",
        "24",
    )
    assert code == 0, out
    data = json.loads(out[out.index("{") :])
    assert data["persona"] == "librarian" and data["answer"].strip()
    assert data["sources"][0] == {
        "path": "handbook/vacation.md",
        "title": "Vacation",
        "score": data["sources"][0]["score"],
    }
    assert data["timings"]["completion_tokens"] > 0 and data["timings"]["ttft_ms"] > 0


def test_ask_unknown_persona_is_a_clear_error(project: Path) -> None:
    code, out = run(project, "ask", "nobody", "hi")
    assert code == 1 and "doesn't exist" in out and "librarian" in out


@pytest.mark.timeout(300)
def test_chat_switches_persona_resets_and_shows_sources(project: Path) -> None:
    script = (
        "\n".join(
            [
                "/persona librarian",
                "How long must passwords be?",
                "/sources",
                "/reset",
                "/quit",
            ]
        )
        + "\n"
    )
    code, out = run(project, "chat", "pirate", input=script)
    assert code == 0, out
    assert "Pete (pirate)" in out and "now talking to Libby" in out
    assert "handbook/security.md" in out and "history cleared" in out


def test_check_reports_a_broken_evals_file(project: Path) -> None:
    path = project / "personas" / "pirate" / "evals.yaml"
    path.write_text("- ask: Hello\n  contains: [ahoy]\n- ask: Bye\n  colour: red\n")
    code, out = run(project, "check")
    assert code == 1 and f"{path}:4" in out and "colour" in out


def test_folder_options_after_the_subcommand_win_over_those_before(project: Path) -> None:
    good = project / "personas"
    broken = project / "other" / "personas" / "bad" / "persona.md"
    broken.parent.mkdir(parents=True)
    broken.write_text("---\nknowledge: [nope]\n---\nHi.\n")
    knowledge = ["--knowledge", str(project / "knowledge"), "--data-dir", str(project / "data")]
    runner = CliRunner()
    after = runner.invoke(
        main,
        ["--personas", str(good), "check", "--personas", str(broken.parent.parent), *knowledge],
    )
    assert after.exit_code == 1 and f"{broken}:2: knowledge: unknown library 'nope'" in after.output
    before = runner.invoke(
        main,
        ["--personas", str(broken.parent.parent), "check", "--personas", str(good), *knowledge],
    )
    assert before.exit_code == 0, before.output
