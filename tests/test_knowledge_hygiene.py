"""What of a site build is not content: Sphinx and MkDocs trees written here, knowledge.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from bots.checks import run_checks
from bots.knowledge import hygiene
from bots.knowledge.index import KnowledgeIndex
from bots.knowledge.scan import scan
from bots.settings import Settings


def page(title: str, body: str) -> str:
    return (
        f"<html><head><title>{title}</title></head><body><div class='body'>"
        f"<h1>{title}</h1><p>{body}</p></div></body></html>"
    )


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def sphinx(tmp_path: Path) -> Path:
    """The shape of Python's HTML docs: pages, per-letter indexes, search, assets, sources."""
    return write(
        tmp_path / "sphinx",
        {
            "objects.inv": "# Sphinx inventory version 2",
            "searchindex.js": "Search.setIndex({})",
            "index.html": page("Python documentation", "Welcome to the tutorial and library."),
            "library/os.path.html": page("os.path", "Common pathname manipulations: join."),
            "genindex.html": page("Index", "os.path module join function"),
            "genindex-A.html": page("Index A", "abs() built-in function"),
            "py-modindex.html": page("Python Module Index", "os.path"),
            "search.html": page("Search", "Please activate JavaScript to search."),
            "_static/pydoctheme.css": "body {}",
            "_static/glossary.json": '{"walrus": "assignment expression"}',
            "_sources/library/os.path.rst.txt": "os.path\n=======\n\nPathname manipulations.",
            "_images/logo.html": page("Logo", "an image page"),
        },
    )


@pytest.fixture
def mkdocs(tmp_path: Path) -> Path:
    """An MkDocs site: pages as folders of index.html, the search index, theme assets."""
    return write(
        tmp_path / "mkdocs",
        {
            "sitemap.xml": "<urlset></urlset>",
            "index.html": page("Home", "Install the tool with pip."),
            "usage/index.html": page("Usage", "Run the tool with --verbose."),
            "404.html": page("Not found", "The page you asked for does not exist."),
            "search/search_index.json": '{"docs": [{"text": "Install the tool"}]}',
            "assets/javascripts/bundle.js.map": "{}",
            "assets/manifest.json": '{"name": "site"}',
            "data/notes.html": page("Notes", "A page under a folder called data."),
        },
    )


def test_sphinx_build_keeps_pages_and_leaves_out_indexes_search_assets_and_sources(
    sphinx: Path,
) -> None:
    found = scan(sphinx)
    assert [c.rel for c in found.candidates] == ["index.html", "library/os.path.html"]
    assert {(e.rel, e.reason) for e in found.excluded} == {
        ("genindex.html", hygiene.GENERATED),
        ("genindex-A.html", hygiene.GENERATED),
        ("py-modindex.html", hygiene.GENERATED),
        ("search.html", hygiene.GENERATED),
        ("_static/", hygiene.ASSET),
        ("_sources/", hygiene.SOURCES),
        ("_images/", hygiene.ASSET),
    }
    assert found.skipped == ()


def test_mkdocs_site_leaves_out_search_data_assets_and_404(mkdocs: Path) -> None:
    found = scan(mkdocs)
    assert [c.rel for c in found.candidates] == [
        "data/notes.html",
        "index.html",
        "usage/index.html",
    ]
    assert {e.rel for e in found.excluded} == {"404.html", "search/", "assets/"}


def test_outside_a_build_search_pages_and_json_are_content(tmp_path: Path) -> None:
    root = write(
        tmp_path / "notes",
        {
            "search.html": page("Search tips", "How we search the archive."),
            "prices.json": '{"coffee": 2}',
            "assets/handbook.md": "# Handbook\n\nExpenses are filed monthly.",
        },
    )
    found = scan(root)
    assert [c.rel for c in found.candidates] == ["assets/handbook.md", "prices.json", "search.html"]
    assert found.excluded == ()


def test_knowledge_yaml_includes_one_asset_and_excludes_a_folder(sphinx: Path) -> None:
    (sphinx / "knowledge.yaml").write_text(
        'include: ["_static/glossary.json", "search.html"]\nexclude: ["library/*"]\n'
    )
    found = scan(sphinx)
    assert [c.rel for c in found.candidates] == [
        "_static/glossary.json",
        "index.html",
        "search.html",
    ]
    reasons = {e.rel: e.reason for e in found.excluded}
    assert reasons["library/"] == hygiene.EXCLUDED
    assert "_static/" not in reasons  # walked for the one file included
    assert reasons["_sources/"] == hygiene.SOURCES
    assert found.skipped == ()


def test_exclude_wins_over_include(sphinx: Path) -> None:
    (sphinx / "knowledge.yaml").write_text('include: ["_static/*"]\nexclude: ["_static/*"]\n')
    reasons = {e.rel: e.reason for e in scan(sphinx).excluded}
    assert reasons["_static/"] == hygiene.EXCLUDED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("include: ['a']\nexlude: ['b']\n", "knowledge.yaml:2: exlude: unknown key"),
        ("include: 'whatsnew/*'\n", "knowledge.yaml:1: include: must be a list of globs"),
        ("include: [a, b\nexclude: c\n", "knowledge.yaml:1: bad YAML: expected ','"),
        ("- a\n- b\n", "knowledge.yaml:1: expected a mapping"),
    ],
)
def test_broken_knowledge_yaml_names_file_line_and_key_and_the_rules_still_apply(
    sphinx: Path, text: str, expected: str
) -> None:
    (sphinx / "knowledge.yaml").write_text(text)
    found = scan(sphinx)
    (problem,) = found.skipped
    assert problem.startswith(f"{sphinx}/") and expected in problem
    assert [c.rel for c in found.candidates] == ["index.html", "library/os.path.html"]


def test_a_page_with_the_text_of_another_is_left_out_in_favour_of_the_nearer_one(
    tmp_path: Path,
) -> None:
    same = page("Install", "Run   pip install bots.")
    root = write(
        tmp_path / "site",
        {
            "install.html": same,
            "v2/install.html": same.replace("Run", "run"),
            "other.md": "# X\n\ny",
        },
    )
    index = KnowledgeIndex(root, tmp_path / "cache")
    index.refresh()
    assert {hit.path for hit in index.search("pip install", k=4)} == {"install.html"}
    (duplicate,) = index.stats.excluded
    assert (duplicate.rel, duplicate.reason, duplicate.detail) == (
        "v2/install.html",
        hygiene.DUPLICATE,
        "install.html",
    )
    assert index.stats.documents == 2

    (root / "install.html").unlink()
    index.refresh()
    assert {hit.path for hit in index.search("pip install", k=4)} == {"v2/install.html"}
    assert index.stats.excluded == ()


GUIDE = " ".join(
    f"Step {n}: open the {word} panel, choose the {word} option and save the {word} settings."
    for n, word in enumerate(["network", "display", "storage", "backup", "printer", "sound"] * 4)
)


def test_a_copy_with_a_changed_date_is_a_near_duplicate_but_a_page_sharing_half_is_not(
    tmp_path: Path,
) -> None:
    half = GUIDE[: len(GUIDE) // 2]
    root = write(
        tmp_path / "site",
        {
            "setup.html": page("Setup guide", f"Updated 2024-05-01. {GUIDE}"),
            "archive/setup-2023.html": page("Setup guide", f"Updated 2023-11-30. {GUIDE}"),
            "kiosk.html": page(
                "Kiosk setup", f"{half} Kiosks lock the keyboard and reboot every night at 3 am."
            ),
        },
    )
    index = KnowledgeIndex(root, tmp_path / "cache")
    index.refresh()

    assert [(e.rel, e.reason, e.detail) for e in index.stats.excluded] == [
        ("archive/setup-2023.html", hygiene.DUPLICATE, "setup.html")
    ]
    assert index.stats.documents == 2
    assert "kiosk.html" in {hit.path for hit in index.search("keyboard reboot night")}


def test_check_counts_what_was_left_out_per_reason_without_calling_it_a_problem(
    sphinx: Path, tmp_path: Path
) -> None:
    knowledge = tmp_path / "knowledge"
    knowledge.mkdir()
    sphinx.rename(knowledge / "python")
    (tmp_path / "personas").mkdir()
    settings = Settings(
        personas_dir=tmp_path / "personas", knowledge_dir=knowledge, data_dir=tmp_path / "data"
    )
    problems, summary = run_checks(settings)
    assert problems == []
    note, totals = summary.splitlines()
    assert note.startswith(f"python: left out 7 path(s) as not content: 4 {hygiene.GENERATED}: ")
    assert "genindex-A.html, genindex.html, py-modindex.html, ..." in note
    assert f"1 {hygiene.SOURCES}: _sources/" in note
    assert totals.endswith("2 documents: 0 problem(s)")
