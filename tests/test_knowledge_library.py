"""KnowledgeBase: persona folders and shared libraries, merged retrieval, watcher refreshes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bots.knowledge import (
    GROUNDING_MIN_SCORE,
    KnowledgeBase,
    UnknownLibrary,
    UnknownPersona,
)
from bots.knowledge.bench import run_knowledge_bench

FIXTURE_LIBRARY = Path(__file__).parent / "fixtures" / "knowledge" / "acme-handbook"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    stat = path.stat()
    # A second forward: coarse file system clocks could leave an edit's mtime unchanged.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    return path


@pytest.fixture
def base(tmp_path: Path) -> KnowledgeBase:
    personas = tmp_path / "personas"
    knowledge = tmp_path / "knowledge"
    write(
        personas / "ada" / "persona.md",
        "---\nname: Ada\nknowledge: [acme-handbook]\n---\nYou are Ada, keeper of the quokka.\n",
    )
    write(personas / "ada" / "evals.yaml", "- question: Where does the quokka live?\n")
    write(
        personas / "ada" / "team.md",
        "# Team\n\nThe platform team has its stand-up at 9:15 in the quokka room.\n",
    )
    write(personas / "bob" / "notes.md", "Bob's notes about the pelican.\n")
    shutil.copytree(FIXTURE_LIBRARY, knowledge / "acme-handbook")
    write(knowledge / "recipes" / "bread.md", "# Bread\n\nSourdough bread needs a starter.\n")
    (knowledge / ".trash").mkdir()
    write(knowledge / "README.md", "Libraries live in the folders here.\n")
    return KnowledgeBase(personas, knowledge, tmp_path / "cache")


@pytest.mark.parametrize(
    ("question", "document"),
    [
        ("How many vacation days do I get?", "vacation.md"),
        ("Can I carry over unused vacation days?", "vacation.md"),
        ("What is the hotel limit for business trips?", "policies/expenses.rst"),
        ("I lost my receipt, can I still claim it?", "policies/expenses.rst"),
        ("When do I get paid for expenses?", "policies/expenses.rst"),
        ("How long must my password be?", "security.html"),
        ("My laptop was stolen, what do I do?", "security.html"),
        ("What is the guest wifi password in Lisbon?", "offices.json"),
        ("Is Labour Day a holiday in Berlin?", "holidays.csv"),
        ("Who meets me at the reception on my first day?", "onboarding.txt"),
    ],
)
def test_right_document_comes_first(base: KnowledgeBase, question: str, document: str) -> None:
    hits = base.index_for_library("acme-handbook").search(question)
    assert hits[0].path == f"acme-handbook/{document}"
    assert hits[0].library == "acme-handbook"
    assert hits[0].score >= GROUNDING_MIN_SCORE


@pytest.mark.parametrize(
    "question",
    ["How do I bake sourdough bread?", "Who won the football world cup in 2014?", "Tell me a joke"],
)
def test_questions_the_handbook_cannot_answer_stay_under_the_grounding_threshold(
    base: KnowledgeBase, question: str
) -> None:
    hits = base.index_for_library("acme-handbook").search(question)
    assert all(hit.score < GROUNDING_MIN_SCORE for hit in hits)


def test_library_names_are_the_visible_folders_under_knowledge(base: KnowledgeBase) -> None:
    assert base.library_names() == ["acme-handbook", "recipes"]


@pytest.mark.parametrize("name", ["missing", "..", "../personas", "/etc", ".trash", "", "a/b"])
def test_unknown_or_unsafe_library_names_are_refused(base: KnowledgeBase, name: str) -> None:
    with pytest.raises(UnknownLibrary, match=repr(name)):
        base.index_for_library(name)


def test_unknown_persona_is_refused(base: KnowledgeBase) -> None:
    with pytest.raises(UnknownPersona, match="'carol'"):
        base.index_for_persona("carol")
    with pytest.raises(UnknownPersona):
        base.index_for_persona("../knowledge")


def test_persona_folder_is_indexed_without_persona_md_and_evals(base: KnowledgeBase) -> None:
    index = base.index_for_persona("ada")
    hits = index.search("quokka")
    assert [(hit.path, hit.library) for hit in hits] == [("team.md", None)]
    assert index.stats.documents == 1


def test_retriever_merges_persona_and_library_hits_by_score(base: KnowledgeBase) -> None:
    write(
        base.personas_dir / "ada" / "parental.md",
        "# Parental leave\n\nParents get 14 extra vacation days in the year a child is born.\n",
    )
    retriever = base.retriever("ada", ["acme-handbook", "acme-handbook"])
    hits = retriever.search("extra vacation days for parents", k=3)
    assert [(hit.path, hit.library) for hit in hits] == [
        ("parental.md", None),
        ("acme-handbook/vacation.md", "acme-handbook"),
        ("acme-handbook/vacation.md", "acme-handbook"),
    ]
    assert hits[0].score > hits[1].score >= hits[2].score
    library_first = retriever.search("carry over unused vacation days", k=4)
    assert library_first[0].path == "acme-handbook/vacation.md"
    assert "parental.md" in [hit.path for hit in library_first[1:]]
    assert [hit.score for hit in library_first] == sorted(
        (hit.score for hit in library_first), reverse=True
    )
    assert base.retriever("bob", []).search("vacation days") == []


def test_retriever_refuses_an_unknown_library(base: KnowledgeBase) -> None:
    with pytest.raises(UnknownLibrary, match="libraries: acme-handbook, recipes"):
        base.retriever("ada", ["acme-handbook", "handbook"])


def test_refresh_path_refreshes_only_the_index_holding_the_file(base: KnowledgeBase) -> None:
    persona = base.index_for_persona("ada")
    library = base.index_for_library("acme-handbook")
    team = write(base.personas_dir / "ada" / "team.md", "The team now meets in the walrus room.\n")
    vacation = write(
        base.knowledge_dir / "acme-handbook" / "vacation.md", "# Vacation\n\nUnlimited narwhals.\n"
    )
    base.refresh_path(vacation)
    assert [hit.path for hit in library.search("narwhals")] == ["acme-handbook/vacation.md"]
    assert persona.search("walrus") == []  # not refreshed: its change is not seen yet
    base.refresh_path(team)
    assert [hit.path for hit in persona.search("walrus")] == ["team.md"]


def test_refresh_path_skips_editor_temporaries_and_unbuilt_indexes(base: KnowledgeBase) -> None:
    persona = base.index_for_persona("ada")
    write(base.personas_dir / "ada" / "team.md", "The team now meets in the walrus room.\n")
    for name in (".team.md.swp", "team.md~", "4913", "persona.md", "evals.yaml", ".git/index"):
        base.refresh_path(base.personas_dir / "ada" / name)
    assert persona.search("walrus") == []
    base.refresh_path(base.personas_dir / "bob" / "notes.md")  # bob's index is not built
    base.refresh_path(base.knowledge_dir / "recipes" / "bread.md")
    base.refresh_path(base.personas_dir.parent / "elsewhere.md")
    assert sorted(base.stats()) == ["personas/ada"]


def test_deleted_file_reported_by_the_watcher_disappears(base: KnowledgeBase) -> None:
    library = base.index_for_library("acme-handbook")
    holidays = base.knowledge_dir / "acme-handbook" / "holidays.csv"
    holidays.unlink()
    base.refresh_path(holidays)
    assert all(hit.path != "acme-handbook/holidays.csv" for hit in library.search("Labour Day"))


def test_stats_name_each_built_index(base: KnowledgeBase) -> None:
    base.retriever("ada", ["acme-handbook"])
    stats = base.stats()
    assert sorted(stats) == ["knowledge/acme-handbook", "personas/ada"]
    assert stats["knowledge/acme-handbook"].documents == 6
    assert stats["knowledge/acme-handbook"].chunks >= 6
    assert stats["personas/ada"].skipped == ()


def test_bench_reports_times_and_reads_only_what_changed(tmp_path: Path) -> None:
    figures = run_knowledge_bench(FIXTURE_LIBRARY, tmp_path / "bench")
    assert figures["documents"] == 6
    assert figures["warm_restart_read"] == 0
    assert figures["incremental_read"] == 1
    for key in ("cold_index_s", "warm_restart_s", "incremental_refresh_ms", "query_p95_ms"):
        assert figures[key] > 0
    assert figures["query_p50_ms"] <= figures["query_p95_ms"]
    assert list((tmp_path / "bench").iterdir()) == []  # the working copy is removed
