"""`bots feedback`: listing chat reactions, and turning thumbs-down questions into eval cases."""

from __future__ import annotations

import json
from pathlib import Path

from bots.evals.loader import load_evals
from bots.store.sqlite_file import SqliteFile
from tests.cli_runner import run_cli as cli
from tests.fakes.projects import write

VACATION = "How many vacation days do employees get?"
PASSWORDS = "How long must passwords be?"


def exchange(store: SqliteFile, platform: str, place: str, persona: str, q: str, a: str) -> int:
    """A stored question and answer, as an adapter leaves them; returns the answer's turn id."""
    conversation = store.conversation_id(platform, place)
    store.add_turn(conversation, "user", q, persona, user_id="U1")
    sources = [{"path": "handbook/vacation.md", "title": "Vacation", "score": 1.2}]
    return store.add_turn(conversation, "assistant", a, persona, sources=sources)


def seed(project: Path) -> None:
    store = SqliteFile(project / "data" / "conversations.sqlite3")
    try:
        bad = exchange(store, "slack", "C1/1", "librarian", VACATION, "You get 40 days,\nor so.")
        store.add_feedback(bad, "U1", -1)
        again = exchange(store, "discord", "G/9", "librarian", f"  {VACATION} ", "Ask HR.")
        store.add_feedback(again, "U2", -1)
        other = exchange(store, "discord", "G/9", "librarian", PASSWORDS, "At least 14 characters.")
        store.add_feedback(other, "U3", -1)
        good = exchange(store, "slack", "C1/2", "pirate", "Who are you?", "Arr, a pirate!")
        store.add_feedback(good, "U1", 1)
    finally:
        store.close()


def test_feedback_lists_reactions_with_their_exchange(project: Path) -> None:
    seed(project)
    code, out = cli(project, "feedback")
    assert code == 0, out
    assert out.splitlines()[-1] == "4 reaction(s): 1 up, 3 down"
    assert "librarian     slack     down  How many vacation days" in out
    assert "answer: You get 40 days, or so." in out
    code, out = cli(project, "feedback", "pirate", "--json")
    rows = json.loads(out)
    assert [
        (r["persona"], r["platform"], r["value"], r["question"], r["answer"]) for r in rows
    ] == [("pirate", "slack", 1, "Who are you?", "Arr, a pirate!")]
    assert rows[0]["sources"] == ["handbook/vacation.md"]


def test_feedback_without_a_database_lists_nothing_and_creates_nothing(project: Path) -> None:
    code, out = cli(project, "feedback")
    assert (code, out.strip()) == (0, "0 reaction(s): 0 up, 0 down")
    assert not (project / "data").exists()


def test_to_evals_appends_valid_todo_cases_once(project: Path) -> None:
    seed(project)
    evals = write(
        project / "personas" / "librarian" / "evals.yaml",
        "# My cases.\n- ask: Who won the 1998 football world cup?\n  declines: true",
    )
    code, out = cli(project, "feedback", "--to-evals", "librarian")
    assert code == 0, out
    assert f"appended 2 case(s) to {evals}" in out
    text = evals.read_text()
    assert text.startswith(
        "# My cases.\n- ask: Who won the 1998 football world cup?\n  declines: true\n"
    )
    # Both answers disliked for the vacation question stand above its one case.
    vacation = text[text.index("# thumbs-down in slack") :]
    assert vacation.index("#   You get 40 days, or so.") < vacation.index("#   Ask HR.")
    assert vacation.index("# thumbs-down in discord on ") < vacation.index(f"- ask: {VACATION}")
    suite = load_evals(evals.parent)  # the round trip through the validator
    assert suite.errors == ()
    assert [(c.turns, bool(c.checks.todo)) for c in suite.cases] == [
        (("Who won the 1998 football world cup?",), False),
        ((VACATION,), True),
        ((PASSWORDS,), True),
    ]
    code, out = cli(project, "feedback", "--to-evals", "librarian")
    assert code == 0 and "no new thumbs-down questions" in out and "(2 already there)" in out
    assert evals.read_text() == text
    code, out = cli(project, "eval", "librarian", "--retrieval-only")
    assert code == 0, out  # a todo case is reported, not failed
    results = [line.split()[-3] for line in out.splitlines()[1:] if line.startswith("librarian ")]
    assert results == ["pass", "todo", "todo"] and "replace with checks (contains" in out


def test_to_evals_creates_the_file_when_there_is_none(project: Path) -> None:
    seed(project)
    code, out = cli(project, "feedback", "--to-evals", "librarian")
    assert code == 0, out
    suite = load_evals(project / "personas" / "librarian")
    assert suite.errors == () and len(suite.cases) == 2


def test_to_evals_refuses_files_it_cannot_append_to(project: Path) -> None:
    seed(project)
    evals = project / "personas" / "librarian" / "evals.yaml"
    for text, message in (
        ("[{ask: hi, declines: true}]\n", "evals.yaml:1: cases can be appended to a list"),
        ("- ask: hi\n  declines: [true\n", "bad YAML"),
    ):
        evals.write_text(text)
        code, out = cli(project, "feedback", "--to-evals", "librarian")
        assert code == 1 and message in out and "nothing was appended" in out
        assert evals.read_text() == text
    code, out = cli(project, "feedback", "--to-evals", "nobody")
    assert code == 1 and "no persona 'nobody'" in out
    code, out = cli(project, "feedback", "--to-evals")
    assert code == 2 and "needs the PERSONA" in out
