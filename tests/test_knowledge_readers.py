"""Readers turn each format into a title and heading-aware sections; chunking cuts them up."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bots.knowledge.chunking import (
    CHUNK_MAX_WORDS,
    CHUNK_OVERLAP_WORDS,
    chunk_document,
)
from bots.knowledge.model import Document, Section
from bots.knowledge.readers import DocumentError, is_supported, read_document

FIXTURES = Path(__file__).parent / "fixtures" / "knowledge" / "acme-handbook"


def make_pdf(pages: list[str], title: str | None = None) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page (offsets computed)."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    page_ids = [4 + 2 * i for i in range(len(pages))]
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{' '.join(f'{i} 0 R' for i in page_ids)}] "
        f"/Count {len(pages)} >>".encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    for page_id, text in zip(page_ids, pages, strict=True):
        stream = f"BT /F1 12 Tf 72 720 Td ({escape(text)}) Tj ET".encode()
        objects[page_id] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {page_id + 1} 0 R >>"
        ).encode()
        objects[page_id + 1] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    info_id = 4 + 2 * len(pages)
    if title:
        objects[info_id] = f"<< /Title ({escape(title)}) >>".encode()
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    xref = len(out)
    size = max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for number in range(1, size):
        out += b"%010d 00000 n \n" % offsets[number]
    info = f" /Info {info_id} 0 R" if title else ""
    out += f"trailer\n<< /Size {size} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def headings(document: Document) -> list[str]:
    return [section.heading for section in document.sections]


def test_markdown_title_from_front_matter_and_sections_under_headings() -> None:
    document = read_document("vacation.md", (FIXTURES / "vacation.md").read_bytes())
    assert document.title == "Vacation and time off"
    assert headings(document) == [
        "Vacation",
        "Vacation > Requesting vacation",
        "Vacation > Carrying over unused days",
        "Vacation > Sick leave",
    ]
    carry = document.sections[2].text
    assert "Up to five unused vacation days carry over" in carry
    assert "title:" not in " ".join(section.text for section in document.sections)


def test_markdown_without_front_matter_takes_first_heading_and_keeps_fences() -> None:
    text = (
        "Intro line before any heading.\n\n"
        "Setup\n=====\n\nInstall it.\n\n"
        "```sh\n# not a heading\npip install acme\n```\n\n"
        "Usage\n-----\n\nRun it.\n\n---\n\nAfter a rule.\n"
    )
    document = read_document("guide.md", text.encode())
    assert document.title == "Setup"
    assert headings(document) == ["", "", "Usage"]
    assert "# not a heading\npip install acme" in document.sections[1].text
    assert document.sections[2].text == "Run it.\n\nAfter a rule."


def test_rst_heading_levels_follow_first_appearance_and_roles_become_text() -> None:
    document = read_document("expenses.rst", (FIXTURES / "policies/expenses.rst").read_bytes())
    assert document.title == "Expense policy"
    assert headings(document) == ["", "Receipts", "Travel", "Travel > Meals", "Submitting a claim"]
    meals = document.sections[3].text
    assert "See allowances and the per-diem table" in meals


def test_sphinx_page_source_rst_txt_is_read_as_rst() -> None:
    data = b"os\n==\n\n.. function:: stat(path)\n"
    document = read_document("_sources/library/os-module.rst.txt", data)
    assert document.title == "os"
    assert document.sections[0].text == "stat(path)"


def test_html_keeps_main_text_and_strips_chrome() -> None:
    document = read_document("security.html", (FIXTURES / "security.html").read_bytes())
    assert document.title == "IT security rules"
    assert headings(document) == [
        "",
        "Passwords",
        "Two-factor authentication",
        "Lost or stolen laptop",
    ]
    text = "\n".join(section.text for section in document.sections)
    assert "at least 14 characters long" in text
    assert "helpdesk: +49 30 1234 4357\nemail:    security@acme.example" in text
    for chrome in (
        "Human resources menu",
        "previous page",
        "Sidebar table of contents",
        "Quick search",
        "tracking pixel",
        "font-family",
        "Welcome back",
        "Related articles",
        "footer notice",
        "Imprint",
        "¶",
    ):
        assert chrome not in text


def test_html_without_main_container_uses_body_minus_chrome() -> None:
    page = (
        b"<html><head><title>Plain page</title></head><body>"
        b"<nav>Menu entries</nav><p>Body <em>text</em> stays.</p><footer>Legal</footer>"
        b"<article><header><h1>Kept title</h1></header><p>Article text.</p></article>"
        b"</body></html>"
    )
    document = read_document("plain.htm", page)
    text = " ".join(section.text for section in document.sections)
    assert document.title == "Kept title"
    assert "Article text." in text
    assert "Body text stays." not in text  # <article> is preferred to the rest of <body>
    assert "Menu entries" not in text and "Legal" not in text


def test_html_in_latin1_is_decoded_by_its_charset() -> None:
    page = '<html><head><meta charset="iso-8859-1"></head><body><p>Café crème</p></body></html>'
    document = read_document("menu.html", page.encode("latin-1"))
    assert document.sections[0].text == "Café crème"
    assert document.title == "menu"


def test_pdf_one_section_per_page_and_metadata_title() -> None:
    data = make_pdf(["Benefits include a gym subsidy.", "Pension plan (company match)."], "Perks")
    document = read_document("benefits.pdf", data)
    assert document.title == "Perks"
    assert headings(document) == ["page 1", "page 2"]
    assert "gym subsidy" in document.sections[0].text
    assert "Pension plan (company match)." in document.sections[1].text


def test_damaged_pdf_is_a_document_error() -> None:
    with pytest.raises(DocumentError, match="not a readable PDF"):
        read_document("broken.pdf", b"%PDF-1.4\nthis is not really a pdf")


def test_csv_rows_become_column_value_lines() -> None:
    document = read_document("holidays.csv", (FIXTURES / "holidays.csv").read_bytes())
    assert document.title == "holidays"
    rows = document.sections[0].text.split("\n\n")
    assert rows[1] == "date: 2025-05-01\nholiday: Labour Day\noffices: Berlin; Lisbon"
    assert len(rows) == 4


def test_csv_with_semicolons_and_quoted_newlines() -> None:
    data = b'name;note\nAda;"first line\nsecond line"\n'
    document = read_document("people.csv", data)
    assert document.sections[0].text == "name: Ada\nnote: first line\nsecond line"


def test_json_is_flattened_to_key_paths_with_one_section_per_top_level_key() -> None:
    document = read_document("offices.json", (FIXTURES / "offices.json").read_bytes())
    assert headings(document) == ["offices", "reception"]
    lines = document.sections[0].text.splitlines()
    assert "offices[0].wifi.password: printer-penguin" in lines
    assert "offices[1].city: Lisbon" in lines
    assert (
        document.sections[1].text == "reception.phone: +49 30 1234 0\nreception.hours: 08:00-18:00"
    )


def test_invalid_json_is_a_document_error() -> None:
    with pytest.raises(DocumentError, match="not valid JSON"):
        read_document("bad.json", b'{"a": ')


def test_text_file_title_is_the_file_name() -> None:
    document = read_document("onboarding.txt", (FIXTURES / "onboarding.txt").read_bytes())
    assert document.title == "onboarding"
    assert document.sections[0].text.startswith("Your first day at Acme\n\nArrive at 9:30")


def test_text_that_is_not_utf8_falls_back_to_windows_1252() -> None:
    document = read_document("note.txt", "naïve “quotes”".encode("cp1252"))
    assert document.sections[0].text == "naïve “quotes”"


def test_supported_extensions() -> None:
    for name in ("a.md", "b.TXT", "c.rst", "d.html", "e.htm", "f.pdf", "g.csv", "h.json"):
        assert is_supported(name), name
    for name in ("avatar.png", "script.js", "notes", "archive.tar.gz"):
        assert not is_supported(name), name


def words(text: str) -> list[str]:
    return text.split()


def test_long_section_is_cut_into_overlapping_chunks_under_its_heading() -> None:
    body = " ".join(f"word{i}" for i in range(1000))
    document = Document("Manual", (Section("Install > Linux", body),))
    chunks = chunk_document("docs/manual.md", document)
    assert len(chunks) >= 4
    assert [chunk.position for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.path == "docs/manual.md" and chunk.title == "Manual"
        assert chunk.heading == "Install > Linux"
        assert len(words(chunk.text)) <= CHUNK_MAX_WORDS
    for before, after in itertools.pairwise(chunks):
        assert words(after.text)[:CHUNK_OVERLAP_WORDS] == words(before.text)[-CHUNK_OVERLAP_WORDS:]
    seen = {word for chunk in chunks for word in words(chunk.text)}
    assert seen == set(words(body))


def test_new_section_starts_a_new_chunk_without_overlap() -> None:
    long_text = " ".join(["alpha"] * 120)
    other = " ".join(["beta"] * 120)
    document = Document("T", (Section("One", long_text), Section("Two", other)))
    chunks = chunk_document("t.md", document)
    assert [(chunk.heading, set(words(chunk.text))) for chunk in chunks] == [
        ("One", {"alpha"}),
        ("Two", {"beta"}),
    ]


def test_tiny_sections_share_a_chunk_and_keep_their_headings_in_the_text() -> None:
    document = Document(
        "FAQ",
        (
            Section("Parking", "Parking is free in the garage."),
            Section("Lunch", "Lunch is served at noon."),
        ),
    )
    (chunk,) = chunk_document("faq.md", document)
    assert chunk.heading == "Parking"
    assert chunk.text == "Parking is free in the garage.\n\nLunch\n\nLunch is served at noon."
