"""KnowledgeIndex: what is indexed, incremental refresh, the on-disk cache, concurrent search."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from bots.knowledge import MAX_DOCUMENT_BYTES, KnowledgeIndex
from bots.knowledge.cache import CACHE_FILE_NAME


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def bump_mtime(path: Path) -> None:
    """Move the mtime forward by a second: file systems with coarse clocks could keep it."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def paths(index: KnowledgeIndex, query: str, k: int = 10) -> list[str]:
    return [hit.path for hit in index.search(query, k)]


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    write(root / "alpha.md", "# Alpha\n\nThe aardvark eats ants at night.\n")
    write(root / "beta.txt", "Bees make honey in the hive.\n")
    write(root / "sub/gamma.rst", "Gamma\n=====\n\nGiraffes have long necks.\n")
    return root


def test_first_refresh_reads_everything_and_search_finds_it(docs: Path, tmp_path: Path) -> None:
    index = KnowledgeIndex(docs, tmp_path / "cache")
    assert index.search("aardvark") == []  # empty until the first refresh
    result = index.refresh()
    assert (result.added, result.updated, result.removed, result.read) == (3, 0, 0, 3)
    hit = index.search("giraffe necks")[0]
    assert (hit.path, hit.title, hit.library) == ("sub/gamma.rst", "Gamma", None)
    assert "long necks" in hit.text
    assert index.stats.documents == 3 and index.stats.chunks == 3


def test_refresh_rereads_only_the_changed_document(docs: Path, tmp_path: Path) -> None:
    index = KnowledgeIndex(docs, tmp_path / "cache")
    index.refresh()
    write(docs / "beta.txt", "Bees make honey. Wasps do not.\n")
    bump_mtime(docs / "beta.txt")
    result = index.refresh()
    assert (result.added, result.updated, result.removed, result.unchanged, result.read) == (
        0,
        1,
        0,
        2,
        1,
    )
    assert paths(index, "wasps") == ["beta.txt"]


def test_touched_but_unchanged_document_is_hashed_not_reread(docs: Path, tmp_path: Path) -> None:
    index = KnowledgeIndex(docs, tmp_path / "cache")
    index.refresh()
    bump_mtime(docs / "alpha.md")
    result = index.refresh()
    assert (result.updated, result.unchanged, result.read) == (0, 3, 0)
    restarted = KnowledgeIndex(docs, tmp_path / "cache").refresh()
    assert restarted.read == 0  # the new mtime was saved with the cache


def test_document_with_the_same_size_and_mtime_is_not_opened(docs: Path, tmp_path: Path) -> None:
    index = KnowledgeIndex(docs, tmp_path / "cache")
    index.refresh()
    beta = docs / "beta.txt"
    stat = beta.stat()
    beta.write_text("Bats hunt moths at dusk.\n"[: stat.st_size].ljust(stat.st_size, "."))
    os.utime(beta, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = index.refresh()
    assert (result.unchanged, result.read) == (3, 0)
    assert paths(index, "honey") == ["beta.txt"]  # the stat is trusted: the file was not read


def test_restart_on_the_same_cache_reads_nothing_unchanged(docs: Path, tmp_path: Path) -> None:
    KnowledgeIndex(docs, tmp_path / "cache").refresh()
    write(docs / "delta.md", "Dolphins sleep with one eye open.\n")
    restarted = KnowledgeIndex(docs, tmp_path / "cache")
    result = restarted.refresh()
    assert (result.added, result.unchanged, result.read) == (1, 3, 1)
    assert paths(restarted, "aardvark ants") == ["alpha.md"]
    assert paths(restarted, "dolphins") == ["delta.md"]


def test_deleted_document_disappears(docs: Path, tmp_path: Path) -> None:
    index = KnowledgeIndex(docs, tmp_path / "cache")
    index.refresh()
    (docs / "sub/gamma.rst").unlink()
    result = index.refresh()
    assert (result.removed, result.read) == (1, 0)
    assert paths(index, "giraffes") == []
    assert KnowledgeIndex(docs, tmp_path / "cache").refresh().read == 0
    assert index.stats.documents == 2


def test_damaged_cache_is_rebuilt_from_the_documents(docs: Path, tmp_path: Path) -> None:
    KnowledgeIndex(docs, tmp_path / "cache").refresh()
    (tmp_path / "cache" / CACHE_FILE_NAME).write_bytes(b"this is not a database" * 100)
    index = KnowledgeIndex(docs, tmp_path / "cache")
    assert index.refresh().read == 3
    assert paths(index, "honey") == ["beta.txt"]
    assert KnowledgeIndex(docs, tmp_path / "cache").refresh().read == 0


def test_ignored_files_are_never_indexed(docs: Path, tmp_path: Path) -> None:
    secret = "Zebras persona instructions"
    write(docs / "persona.md", f"---\nname: Ada\n---\n{secret}\n")
    write(docs / "evals.yaml", f"- question: {secret}\n")
    for name in (
        ".hidden.md",
        ".git/notes.md",
        "alpha.md.swp",
        ".alpha.md.swx",
        "alpha.md~",
        ".#alpha.md",
        "#alpha.md#",
        "4913",
        "draft.tmp",
        "avatar.png",
        "script.js",
    ):
        write(docs / name, secret)
    index = KnowledgeIndex(docs, tmp_path / "cache")
    result = index.refresh()
    assert result.added == 3
    assert index.search("zebras persona instructions") == []
    assert result.skipped == ()


def test_file_over_the_size_limit_is_skipped_with_the_reason(docs: Path, tmp_path: Path) -> None:
    with (docs / "huge.txt").open("wb") as file:
        file.truncate(MAX_DOCUMENT_BYTES + 1)  # sparse: no 20 MB written
    index = KnowledgeIndex(docs, tmp_path / "cache")
    result = index.refresh()
    assert result.added == 3
    (reason,) = index.stats.skipped
    assert reason.startswith("huge.txt: too large (20.0 MiB; the limit is 20 MiB)")


def test_symlink_escaping_the_root_is_refused(docs: Path, tmp_path: Path) -> None:
    outside = write(tmp_path / "outside" / "secret.md", "Passwords of the payroll server.\n")
    (docs / "linked.md").symlink_to(outside)
    (docs / "linked-folder").symlink_to(outside.parent, target_is_directory=True)
    (docs / "inside.md").symlink_to(docs / "alpha.md")
    index = KnowledgeIndex(docs, tmp_path / "cache")
    result = index.refresh()
    assert index.search("payroll server passwords") == []
    assert result.added == 4  # the three documents and the link that stays inside
    assert [reason.split(":")[:2] for reason in result.skipped] == [
        ["linked-folder", " refused"],
        ["linked.md", " refused"],
    ]
    # The link inside is read, and found to be the same text as its target: served once.
    assert sorted(paths(index, "aardvark")) == ["alpha.md"]
    assert [(e.rel, e.detail) for e in index.stats.excluded] == [("inside.md", "alpha.md")]


def test_unreadable_document_is_skipped_and_not_reread_until_it_changes(
    docs: Path, tmp_path: Path
) -> None:
    write(docs / "broken.json", '{"unterminated": ')
    index = KnowledgeIndex(docs, tmp_path / "cache")
    result = index.refresh()
    (reason,) = result.skipped
    assert reason.startswith("broken.json: cannot read: not valid JSON")
    assert index.stats.documents == 3
    assert KnowledgeIndex(docs, tmp_path / "cache").refresh().read == 0
    write(docs / "broken.json", '{"fixed": "jellyfish"}')
    bump_mtime(docs / "broken.json")
    result = index.refresh()
    assert (result.read, result.skipped) == (1, ())
    assert paths(index, "jellyfish") == ["broken.json"]


def test_missing_root_is_an_empty_index(tmp_path: Path) -> None:
    index = KnowledgeIndex(tmp_path / "nowhere", tmp_path / "cache")
    assert index.refresh().added == 0
    assert index.search("anything") == []


def test_query_of_stopwords_or_unknown_words_finds_nothing(docs: Path, tmp_path: Path) -> None:
    index = KnowledgeIndex(docs, tmp_path / "cache")
    index.refresh()
    assert index.search("what is the") == []
    assert index.search("xylophone") == []
    assert index.search("aardvark", k=0) == []


def test_search_during_refresh_sees_a_whole_index(docs: Path, tmp_path: Path) -> None:
    index = KnowledgeIndex(docs, tmp_path / "cache")
    index.refresh()
    results: list[set[str]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def search_until_stopped() -> None:
        try:
            while not stop.is_set():
                results.append(set(paths(index, "aardvark honey giraffes dolphins")))
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    searcher = threading.Thread(target=search_until_stopped)
    searcher.start()
    try:
        for round_ in range(15):
            extra = docs / "delta.md"
            if round_ % 2 == 0:
                write(extra, "Dolphins sleep with one eye open.\n")
            else:
                extra.unlink()
            index.refresh()
    finally:
        stop.set()
        searcher.join()
    assert errors == []
    base = {"alpha.md", "beta.txt", "sub/gamma.rst"}
    assert results and all(found in (base, base | {"delta.md"}) for found in results)
