"""`evals.yaml`: what a valid file gives, and every problem named by file, line and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bots.evals.loader import MAX_CASES, MAX_EVALS_BYTES, MAX_TURNS, load_evals, parse_evals
from bots.evals.model import EvalError, EvalSuite


def parse(text: str, path: Path = Path("personas/p/evals.yaml")) -> EvalSuite:
    return parse_evals(path, textwrap.dedent(text).encode())


def only_error(text: str) -> EvalError:
    suite = parse(text)
    assert len(suite.errors) == 1, [str(e) for e in suite.errors]
    return suite.errors[0]


def test_valid_file_gives_cases_with_their_checks() -> None:
    suite = parse(
        """\
        # a comment
        - name: vacation
          ask: How many vacation days do I get?
          contains: ["25", "/\\\\bdays?\\\\b/"]
          not_contains: Sorry
          cites: [acme-handbook/vacation.md, /expenses.md]
          max_chars: 400
        - ask: [Hello, "Who won the 1998 world cup?"]
          declines: true
        - ask: What is the capital of France?
          todo: add a check
        """
    )
    assert suite.errors == ()
    first, second, third = suite.cases
    assert (first.name, first.line, first.turns) == (
        "vacation",
        2,
        ("How many vacation days do I get?",),
    )
    assert [p.source for p in first.checks.contains] == ["25", "/\\bdays?\\b/"]
    assert first.checks.contains[1].find("twenty DAYS off") == "DAYS"
    assert first.checks.contains[0].find("about 25 days") == "25"
    assert first.checks.not_contains[0].find("sorry, no") == "sorry"
    assert first.checks.cites == ("acme-handbook/vacation.md", "expenses.md")
    assert first.checks.max_chars == 400 and first.checks.declines is None
    assert second.name == "Who won the 1998 world cup?" and second.turns[0] == "Hello"
    assert second.checks.declines is True and not second.checks.needs_answer
    assert third.checks.todo == "add a check"


def test_literal_text_is_not_a_regular_expression() -> None:
    case = parse("- ask: hi\n  contains: 'costs $5 (net)'\n").cases[0]
    assert case.checks.contains[0].find("It COSTS $5 (net).") == "COSTS $5 (net)"
    assert case.checks.contains[0].find("costs 5 net") is None


def test_numbers_are_text_to_look_for() -> None:
    case = parse("- ask: hi\n  contains: 25\n").cases[0]
    assert case.checks.contains[0].find("25 days") == "25"


def test_missing_and_empty_files_have_no_cases_and_no_errors(tmp_path: Path) -> None:
    missing = load_evals(tmp_path)
    assert (missing.exists, missing.cases, missing.errors) == (False, (), ())
    (tmp_path / "evals.yaml").write_text("# nothing yet\n")
    empty = load_evals(tmp_path)
    assert (empty.exists, empty.cases, empty.errors) == (True, (), ())


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        ("- ask: hi\n  contains: [a\n", 2, "", "bad YAML"),
        ("ask: hi\ncontains: a\n", 1, "", "must be a list of cases"),
        ("- ask: hi\n  declines: true\n- just text\n", 3, "", "case 2 must be a mapping"),
        ("- ask: hi\n  declines: true\n  cite: a.md\n", 3, "cite", "unknown key"),
        ("- ask: hi\n  declines: true\n  ask: again\n", 3, "ask", "given twice (first on line 1)"),
        ("- declines: true\n", 1, "ask", "missing"),
        ("- ask: {q: hi}\n  declines: true\n", 1, "ask", "must be text or a list of text"),
        ("- ask: '  '\n  declines: true\n", 1, "ask", "must not be empty"),
        ("- ask: []\n  declines: true\n", 1, "ask", "must not be an empty list"),
        (f"- ask: {['q'] * (MAX_TURNS + 1)}\n  declines: true\n", 1, "ask", "turns; the limit"),
        (f"- ask: {'x' * 4001}\n  declines: true\n", 1, "ask", "longer than 4000"),
        ("- ask: hi\n  contains: true\n", 2, "contains", "must be text or a list of text"),
        (
            "- ask: hi\n  contains:\n    - ok\n    - /[unclosed/\n",
            4,
            "contains",
            "not a valid regular",
        ),
        ("- ask: hi\n  not_contains: /(?P<x/\n", 2, "not_contains", "not a valid regular"),
        ("- ask: hi\n  cites: {a: b}\n", 2, "cites", "must be text or a list of text"),
        ("- ask: hi\n  declines: yes please\n", 2, "declines", "must be true or false"),
        ("- ask: hi\n  max_chars: 0\n", 2, "max_chars", "at least 1"),
        ("- ask: hi\n  max_chars: many\n", 2, "max_chars", "whole number"),
        ("- ask: hi\n  max_chars: true\n", 2, "max_chars", "whole number"),
        ("- ask: hi\n  todo: ''\n", 2, "todo", "must be text"),
        ("- ask: hi\n", 1, "", "case 1 has no check"),
        ("- ask: hi\n  name: ''\n  declines: true\n", 2, "name", "non-empty"),
        ("- ask: hi\n  contains: !!python/name:os.system x\n", 2, "contains", "bad value"),
        (
            "- ask: hi\n  declines: true\n- name: hi\n  ask: other\n  declines: true\n",
            3,
            "name",
            "another case (line 1) has the same name 'hi'",
        ),
    ],
)
def test_each_problem_names_line_and_key(text: str, line: int, key: str, message: str) -> None:
    error = only_error(text)
    assert (error.line, error.key) == (line, key), str(error)
    assert message in error.message
    assert str(error).startswith(f"personas/p/evals.yaml:{line}: ")


def test_every_problem_is_reported_and_valid_cases_still_run() -> None:
    suite = parse(
        """\
        - ask: good one
          declines: true
        - ask: bad one
          max_chars: -1
          colour: blue
        - ask: another good one
          cites: a.md
        """
    )
    assert [c.name for c in suite.cases] == ["good one", "another good one"]
    assert sorted((e.line, e.key) for e in suite.errors) == [(4, "max_chars"), (5, "colour")]


def test_not_utf8_and_too_large_files(tmp_path: Path) -> None:
    bad = parse_evals(tmp_path / "evals.yaml", b"- ask: hi\n  contains: \xff\n")
    assert (bad.errors[0].line, bad.errors[0].message) == (2, "not UTF-8 text")
    (tmp_path / "evals.yaml").write_bytes(b"#" * (MAX_EVALS_BYTES + 1))
    large = load_evals(tmp_path)
    assert large.cases == () and "the limit is" in large.errors[0].message


def test_too_many_cases_keeps_the_first() -> None:
    text = "".join(f"- ask: question {n}\n  declines: true\n" for n in range(MAX_CASES + 1))
    suite = parse(text)
    assert len(suite.cases) == MAX_CASES
    assert suite.errors[0].line == 2 * MAX_CASES + 1 and "too many cases" in suite.errors[0].message


def test_long_questions_get_short_unique_default_names() -> None:
    suite = parse(f"- ask: {'why ' * 40}\n  declines: true\n")
    assert len(suite.cases[0].name) <= 60 and suite.cases[0].name.endswith("…")
