"""Eval cases against the real model: each check type, determinism, retrieval-only, `bots eval`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bots.evals.runner import run_persona
from bots.runtime import Runtime
from bots.settings import Settings
from tests.cli_runner import run_cli
from tests.fakes.projects import persona_md, write

EVERY_CHECK = """\
- name: all pass
  ask: How many vacation days do employees get?
  cites: handbook/vacation.md
  contains: /\\w+/
  not_contains: zebra-unicorn
  max_chars: 5000
  declines: false
- name: all fail
  ask: How many vacation days do employees get?
  cites: security.md
  contains: zebra-unicorn
  not_contains: /\\w+/
  max_chars: 1
  declines: true
- name: declines off-topic
  ask: Who won the 1998 football world cup?
  declines: true
- name: still to write
  ask: Who won the 1998 football world cup?
  todo: say what a good answer contains
"""


@pytest.fixture
async def idle_app(project: Path, settings_for: Callable[..., Settings]) -> AsyncIterator[Runtime]:
    """The project's app without the model: enough for retrieval-only runs."""
    application = Runtime.create(settings_for(project))
    await application.start(watch=False, load_model=False)
    try:
        yield application
    finally:
        await application.close()


def cli(project: Path, *args: str) -> tuple[int, str]:
    return run_cli(project, *args, env={"BOTS_MODEL_MAX_TOKENS": "48"})


async def test_every_check_type_against_the_real_model(app: Runtime, project: Path) -> None:
    write(project / "personas" / "librarian" / "evals.yaml", EVERY_CHECK)
    run = await run_persona(app, "librarian")
    assert run.errors == ()
    statuses = {r.name: r.status for r in run.results}
    assert statuses == {
        "all pass": "pass",
        "all fail": "fail",
        "declines off-topic": "pass",
        "still to write": "todo",
    }
    passed, failed = run.results[0], run.results[1]
    assert passed.answer.strip() and "handbook/vacation.md" in passed.sources
    # Temperature 0, a fixed seed and a fresh evaluation; llama.cpp's kernels may still round
    # differently with the KV cells laid out differently, so only the start must agree.
    assert failed.answer[:40] == passed.answer[:40]
    for expected in (
        "cites security.md: not among the sources (handbook/vacation.md",
        "contains 'zebra-unicorn': not in the answer",
        "not_contains '/\\w+/': the answer has",
        "max_chars 1: the answer has",
        "declines: it answered instead of declining",
        'the answer was "',
    ):
        assert expected in failed.reason
    assert run.results[2].declined and run.results[2].latency_ms < passed.latency_ms
    assert run.failed and run.count("todo") == 1


async def test_retrieval_only_judges_citations_and_declines_without_generating(
    idle_app: Runtime, project: Path
) -> None:
    write(
        project / "personas" / "librarian" / "evals.yaml",
        EVERY_CHECK
        + "- ask: Tell me a joke.\n  contains: ha\n"
        + "- name: the last turn is judged\n  declines: true\n"
        + "  ask: ['How many vacation days do employees get?', 'Who won the 1998 world cup?']\n",
    )
    write(project / "personas" / "pirate" / "evals.yaml", "- ask: Who are you?\n  declines: true\n")
    run = await run_persona(idle_app, "librarian", retrieval_only=True)
    by_name = {r.name: r for r in run.results}
    assert by_name["all pass"].status == "pass" and by_name["all pass"].answer == ""
    assert "need the generated answer" in by_name["all pass"].reason
    assert by_name["all fail"].status == "fail"
    assert "cites security.md" in by_name["all fail"].reason
    assert "declines: it answered instead of declining" in by_name["all fail"].reason
    assert by_name["declines off-topic"].status == "pass"
    assert by_name["Tell me a joke."].status == "skipped"
    assert by_name["the last turn is judged"].status == "pass"
    pirate = await run_persona(idle_app, "pirate", retrieval_only=True)
    assert pirate.results[0].status == "fail"
    assert "only a `grounding: strict` persona declines; pirate is open" in pirate.results[0].reason


async def test_broken_evals_file_never_breaks_the_persona(app: Runtime, project: Path) -> None:
    folder = project / "personas" / "librarian"
    write(folder / "evals.yaml", "- ask: Who won the 1998 football world cup?\n  declines: maybe\n")
    app.registry.reload("librarian")
    state = app.registry.state("librarian")
    assert state is not None and state.persona is not None and state.errors == ()
    assert all(
        "evals" not in hit.path for hit in app.service.retrieve(state.persona, "declines maybe")
    )
    run = await run_persona(app, "librarian")
    assert run.results == () and run.failed
    assert (
        str(run.errors[0])
        == f"{folder / 'evals.yaml'}:2: declines: must be true or false, got 'maybe'"
    )


async def test_broken_persona_fails_the_run_and_judges_the_last_good_version(
    idle_app: Runtime, project: Path
) -> None:
    folder = project / "personas" / "librarian"
    write(folder / "evals.yaml", "- ask: Who won the 1998 football world cup?\n  declines: true\n")
    write(folder / "persona.md", persona_md("Strict.", grounding="sometimes"))
    idle_app.registry.reload("librarian")
    run = await run_persona(idle_app, "librarian", retrieval_only=True)
    assert run.results[0].status == "pass" and run.failed
    assert run.errors[0].path == folder / "persona.md" and run.errors[0].key == "grounding"


def test_bots_eval_retrieval_only_json_and_exit_codes(project: Path) -> None:
    librarian = project / "personas" / "librarian" / "evals.yaml"
    write(librarian, "- ask: How many vacation days do employees get?\n  cites: vacation.md\n")
    code, out = cli(project, "eval", "--retrieval-only", "--json")
    assert code == 0, out
    body = json.loads(out)
    assert body["ok"] and body["passed"] == 1 and body["failed"] == 0
    assert [p["persona"] for p in body["personas"]] == ["librarian", "pirate"]
    assert body["personas"][1]["has_evals"] is False
    write(librarian, "- ask: How many vacation days do employees get?\n  cites: expenses.md\n")
    code, out = cli(project, "eval", "librarian", "--retrieval-only")
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split() == ["PERSONA", "CASE", "RESULT", "LATENCY"]
    assert lines[1].split()[:2] == ["librarian", "How"] and "FAIL" in lines[1]
    assert "cites expenses.md: not among the sources (handbook/vacation.md" in lines[2]
    assert lines[-1].startswith("FAILED: 1 case(s) in 1 persona(s), 1 failing")
    code, out = cli(project, "eval", "nobody", "--retrieval-only")
    assert code == 1 and "no persona 'nobody'" in out


def test_bots_eval_generates_with_the_real_model(project: Path) -> None:
    write(
        project / "personas" / "librarian" / "evals.yaml",
        "- name: vacation\n  ask: [Hello!, 'How many vacation days do employees get?']\n"
        "  cites: vacation.md\n  max_chars: 5000\n"
        "- name: off-topic\n  ask: Who won the 1998 football world cup?\n  declines: true\n",
    )
    code, out = cli(project, "eval", "librarian")
    assert code == 0, out
    # A case's row, not the lines under it (a reason, what the grounding gate did).
    rows = [line.split() for line in out.splitlines()[1:] if not line.startswith(" ")][:2]
    assert [row[-3] for row in rows] == ["pass", "pass"]
    assert rows[0][-1] == "s" or rows[0][-1] == "ms"
    assert out.splitlines()[-1].startswith("ok: 2 case(s) in 1 persona(s), 0 failing")
