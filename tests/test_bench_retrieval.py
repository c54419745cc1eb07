"""`bots bench retrieval`'s machinery on a tiny corpus of three pages and three questions."""

from __future__ import annotations

from pathlib import Path

import pytest

from bots.bench.retrieval import (
    QUESTIONS_FILE,
    BenchError,
    Question,
    format_table,
    load_questions,
    run_retrieval_bench,
)


def page(title: str, body: str) -> str:
    return f"<html><body><div class='body'><h1>{title}</h1><p>{body}</p></div></body></html>"


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "library").mkdir(parents=True)
    (root / "library" / "shlex.html").write_text(
        page("shlex", "Split a command line like a shell.")
    )
    (root / "library" / "os.path.html").write_text(page("os.path", "Join pathname parts."))
    (root / "glossary.html").write_text(page("Glossary", "Hashable: has a hash value."))
    return root


QUESTIONS = (
    Question(
        "How do I split a command line like a shell does?",
        "paraphrase",
        frozenset({"library/shlex.html"}),
    ),
    Question("os.path.join", "dotted", frozenset({"library/os.path.html"})),
    Question("What does hashable mean?", "glossary", frozenset({"glossary.html"})),
)


def test_both_contenders_are_scored_on_the_same_questions(docs: Path) -> None:
    ours, baseline = run_retrieval_bench(docs, QUESTIONS)
    for score in (ours, baseline):
        assert (score.hit_at_1, score.hit_at_5, score.mrr, score.in_answer) == (1, 1, 1, 1)
        assert score.misses == ()
        assert score.index_s > 0 and 0 < score.query_p50_ms <= score.query_p95_ms
        assert score.by_kind == {"dotted": 1, "glossary": 1, "paraphrase": 1}
    table = format_table([ours, baseline], len(QUESTIONS))
    assert "| bots (persona retrieval) | 100% | 100% | 1.00 | 100% |" in table
    assert "| plain BM25, whole pages | 100% | 100% | 1.00 | 100% |" in table


def test_a_question_nobody_answers_is_a_miss_with_what_came_back(docs: Path) -> None:
    wrong = Question("What does hashable mean?", "glossary", frozenset({"library/shlex.html"}))
    ours, baseline = run_retrieval_bench(docs, (*QUESTIONS[:2], wrong))
    assert ours.hit_at_1 == pytest.approx(2 / 3) and ours.in_answer == pytest.approx(2 / 3)
    assert ours.misses == ("What does hashable mean? -> glossary.html",)
    assert baseline.by_kind["glossary"] == 0


def test_a_question_naming_a_page_not_in_the_folder_is_refused(docs: Path) -> None:
    typo = Question("shlex?", "plain", frozenset({"library/shelx.html"}))
    with pytest.raises(
        BenchError, match=r"no such page\(s\) named by the questions: library/shelx"
    ):
        run_retrieval_bench(docs, (typo,))


def test_the_shipped_question_set_has_50_questions_of_every_kind() -> None:
    questions = load_questions(QUESTIONS_FILE)
    assert len(questions) >= 50
    assert {q.kind for q in questions} >= {"operator", "dotted", "paraphrase", "glossary"}
    assert not [q for q in questions if any(p.startswith("whatsnew/") for p in q.pages)]


def test_a_malformed_question_set_names_the_question(tmp_path: Path) -> None:
    path = tmp_path / "questions.yaml"
    path.write_text("- {q: 'What is a generator?', pages: [glossary.html]}\n- {q: 'no pages'}\n")
    with pytest.raises(BenchError, match="question 2: needs q"):
        load_questions(path)
