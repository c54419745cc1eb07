"""Ranking properties on small real folders: titles, identifiers, release notes, diversity."""

from __future__ import annotations

from pathlib import Path

from bots.knowledge import ranking
from bots.knowledge.index import KnowledgeIndex
from bots.knowledge.lexical import tokenize


def build(tmp_path: Path, files: dict[str, str]) -> KnowledgeIndex:
    root = tmp_path / "docs"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    index = KnowledgeIndex(root, tmp_path / "cache")
    index.refresh()
    return index


FILLER = " ".join(f"filler{i} words about general matters" for i in range(30))


def test_identifiers_flags_and_operators_are_tokens_beside_their_words() -> None:
    terms = tokenize(
        "Call os.path.join(a) with follow_symlinks, run python -m venv --clear; x // y"
    )
    for term in ("os", "path", "join", "os.path", "os.path.join", "follow_symlinks", "-m"):
        assert term in terms
    assert {"--clear", "//", "clear", "venv"} <= set(terms)


def test_urls_dashes_and_hyphenated_words_make_no_operator_tokens() -> None:
    terms = tokenize("See https://example.org - a built-in, well-known tool -- really")
    assert not [t for t in terms if not t.isalnum() and t != "example.org"]


def test_a_page_titled_with_the_asked_name_beats_a_page_that_mentions_it(tmp_path: Path) -> None:
    index = build(
        tmp_path,
        {
            "shlex.md": f"# shlex: simple lexical analysis\n\nThe shlex class splits. {FILLER}",
            "tips.md": "# Tips\n\nUse shlex to split a command line. " + FILLER[:300],
        },
    )
    assert [hit.path for hit in index.search("shlex")][:2] == ["shlex.md", "tips.md"]


def test_a_dotted_module_path_finds_its_page(tmp_path: Path) -> None:
    index = build(
        tmp_path,
        {
            "json.tool.md": f"# json.tool\n\nValidate and pretty-print JSON. {FILLER}",
            "json.md": "# json\n\nThe json module encodes; see the tool module for the command.",
            "tool.md": "# Tools\n\nA tool for json files and a tool for xml files.",
        },
    )
    assert index.search("What does json.tool do?")[0].path == "json.tool.md"


def test_an_operator_question_finds_the_page_that_uses_the_operator(tmp_path: Path) -> None:
    index = build(
        tmp_path,
        {
            "floor.md": "# Division\n\nThe expression a // b divides and rounds down.",
            "true.md": "# Division\n\nThe expression a / b divides and keeps the fraction.",
        },
    )
    assert index.search("what does // do in division")[0].path == "floor.md"


def test_release_notes_rank_below_the_page_that_documents_the_feature(tmp_path: Path) -> None:
    notes = "Assignment expressions use the walrus operator := to assign inside an expression."
    index = build(
        tmp_path,
        {
            "whatsnew/3.8.md": f"# Python 3.8\n\n{notes}",
            "reference/expressions.md": (
                "# Expressions\n\n## Assignment expressions\n\n"
                "An assignment expression (the walrus), name := value, assigns the value to a name."
            ),
        },
    )
    assert ranking.document_weight("whatsnew/3.8.md", "Python 3.8") == ranking.RELEASE_NOTES_WEIGHT
    assert ranking.document_weight("library/news.md", "What's New in 2.0") < 1
    assert ranking.document_weight("reference/expressions.md", "Expressions") == 1
    assert [h.path for h in index.search("walrus operator := assignment expression")] == [
        "reference/expressions.md",
        "whatsnew/3.8.md",
    ]


def test_an_unseen_identifier_costs_nothing_its_words_are_what_count(tmp_path: Path) -> None:
    index = build(tmp_path, {"config.md": "# Settings\n\nThe config file is written in yaml."})
    (dotted,) = index.search("the config.yaml file")
    (plain,) = index.search("the config yaml file")
    assert dotted.score == plain.score > 0.9


def test_hits_come_from_several_documents_at_most_two_chunks_each(tmp_path: Path) -> None:
    long_page = "\n\n".join(f"## Part {i}\n\nKiwi kiwi kiwi orchard {FILLER}" for i in range(6))
    index = build(
        tmp_path,
        {
            "kiwi.md": f"# Kiwi\n\n{long_page}",
            "fruit.md": "# Fruit\n\nA kiwi is a fruit.",
            "birds.md": f"# Birds\n\nThe kiwi is also a bird. {FILLER}",
        },
    )
    assert len([c for c in index.chunks if c.path == "kiwi.md"]) >= 4
    paths = [hit.path for hit in index.search("kiwi", k=4)]
    assert len(paths) == 4
    assert sorted(set(paths)) == ["birds.md", "fruit.md", "kiwi.md"]
    assert paths.count("kiwi.md") == 2


def test_one_document_alone_still_fills_the_hits(tmp_path: Path) -> None:
    long_page = "\n\n".join(f"## Part {i}\n\nKiwi orchard {FILLER}" for i in range(6))
    index = build(tmp_path, {"kiwi.md": f"# Kiwi\n\n{long_page}", "other.md": "# Other\n\nPlums."})
    hits = index.search("kiwi orchard", k=4)
    assert [hit.path for hit in hits] == ["kiwi.md"] * 4
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
