"""Who may see a document (knowledge.yaml `audience`) and who reads a place (`Reader`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bots.knowledge.audience import EVERYONE, OPERATOR, Reader, Rule, describe, visible
from bots.knowledge.index import KnowledgeIndex
from bots.knowledge.overrides import load_overrides
from tests.fakes.projects import write

ALICE, BOB = "U0ALICE01", "U0BOB0001"
DISCORD_ALICE = "234567890123456789"
SALARIES = "# Salary bands\n\nEngineers earn between 70,000 and 95,000 zorkmids a year.\n"
HOLIDAYS = "# Holidays\n\nEveryone gets 27 vacation days a year.\n"


def hr_folder(root: Path, audience: str) -> Path:
    write(root / "hr" / "salaries.md", SALARIES)
    write(root / "holidays.md", HOLIDAYS)
    write(root / "knowledge.yaml", audience)
    return root


RESTRICTED = f"""\
audience:
  - paths: ["hr/*"]
    slack_users: [{ALICE}]
    discord_users: ["{DISCORD_ALICE}"]
    discord_roles: [HR]
"""


def paths(index: KnowledgeIndex, reader: Reader, query: str = "salary bands zorkmids") -> set[str]:
    return {hit.path for hit in index.search(query, 4, reader)}


def test_a_restricted_document_is_found_only_where_every_reader_may_see_it(
    tmp_path: Path,
) -> None:
    index = KnowledgeIndex(hr_folder(tmp_path / "docs", RESTRICTED), tmp_path / "cache")
    index.refresh()

    assert paths(index, EVERYONE) == set()
    assert paths(index, Reader("slack")) == set()  # a public channel
    assert paths(index, Reader.alone("slack", BOB)) == set()
    assert paths(index, Reader.members("slack", [ALICE, BOB])) == set()
    assert paths(index, Reader.alone("slack", ALICE)) == {"hr/salaries.md"}
    assert paths(index, Reader.members("slack", [ALICE])) == {"hr/salaries.md"}
    assert paths(index, Reader.alone("discord", DISCORD_ALICE)) == {"hr/salaries.md"}
    assert paths(index, Reader.alone("discord", "345678901234567890", ["HR"])) == {"hr/salaries.md"}
    assert paths(index, Reader.alone("discord", ALICE)) == set()  # a Slack id on Discord
    assert paths(index, OPERATOR) == {"hr/salaries.md"}
    # The public page is found by everyone, and the hits say who may see what.
    (public,) = index.search("vacation days", 1, EVERYONE)
    assert public.path == "holidays.md" and describe(public.access) == "everyone"
    (private,) = index.search("salary bands", 1, OPERATOR)
    assert describe(private.access) == (
        f"slack users {ALICE}; discord users {DISCORD_ALICE}; discord roles HR"
    )


def test_restricted_chunks_never_crowd_out_what_the_reader_may_see(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    for n in range(30):
        write(root / "hr" / f"band{n}.md", f"# Salary band {n}\n\nSalary band {n} pays well.\n")
    write(root / "salary.md", "# Salary day\n\nSalary is paid on the 25th.\n")
    write(root / "knowledge.yaml", RESTRICTED)
    index = KnowledgeIndex(root, tmp_path / "cache")
    index.refresh()

    assert [hit.path for hit in index.search("salary band", 4, EVERYONE)] == ["salary.md"]


def test_private_only_documents_stay_out_of_shared_places_even_for_allowed_members(
    tmp_path: Path,
) -> None:
    audience = (
        f"audience:\n  - paths: ['hr/*']\n    slack_users: [{ALICE}]\n    private_only: true\n"
    )
    index = KnowledgeIndex(hr_folder(tmp_path / "docs", audience), tmp_path / "cache")
    index.refresh()

    assert paths(index, Reader.members("slack", [ALICE])) == set()
    assert paths(index, Reader.alone("slack", ALICE)) == {"hr/salaries.md"}


def test_an_audience_edit_is_live_on_the_next_refresh_without_reading_documents(
    tmp_path: Path,
) -> None:
    root = hr_folder(tmp_path / "docs", RESTRICTED)
    index = KnowledgeIndex(root, tmp_path / "cache")
    index.refresh()
    assert paths(index, EVERYONE) == set()

    (root / "knowledge.yaml").write_text("")  # made public
    result = index.refresh()
    assert result.read == 0 and paths(index, EVERYONE) == {"hr/salaries.md"}

    (root / "knowledge.yaml").write_text(RESTRICTED)  # private again
    index.refresh()
    assert paths(index, EVERYONE) == set()


def test_a_broken_audience_keeps_the_last_good_one_and_a_first_broken_one_hides_all(
    tmp_path: Path,
) -> None:
    root = hr_folder(tmp_path / "docs", RESTRICTED)
    index = KnowledgeIndex(root, tmp_path / "cache")
    index.refresh()
    (root / "knowledge.yaml").write_text(RESTRICTED.replace("[HR]", "[HR"))  # bad YAML

    index.refresh()

    assert paths(index, EVERYONE) == set()
    assert paths(index, Reader.alone("slack", ALICE)) == {"hr/salaries.md"}
    assert any("knowledge.yaml" in problem for problem in index.stats.skipped)

    fresh = KnowledgeIndex(root, tmp_path / "cache2")  # a new process meets the broken file
    fresh.refresh()
    assert paths(fresh, Reader.alone("slack", ALICE)) == set()
    assert paths(fresh, EVERYONE, "vacation days") == set()
    assert paths(fresh, OPERATOR) == {"hr/salaries.md"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "audience:\n  - slack_users: ['234567890123456789']\n",
            ":2: audience.slack_users: '234567890123456789' is not a Slack user id such as"
            " U012ABCDEF (that looks like a Discord id: put it under discord_users)",
        ),
        (
            f"audience:\n  - paths: ['hr/*']\n    discord_users: [{ALICE}]\n",
            f":3: audience.discord_users: '{ALICE}' is not a Discord user id (a number of 17 to"
            " 20 digits) (that looks like a Slack id: put it under slack_users)",
        ),
        (
            f"audience:\n  - slack_users: [{ALICE}]\n    roles: [HR]\n",
            ":3: audience.roles: unknown key (known: paths, slack_users, discord_users,"
            " discord_roles, private_only)",
        ),
        ("audience:\n  - paths: ['hr/*']\n", ":2: audience: a rule must name slack_users"),
        (
            f"audience:\n  - slack_users: [{ALICE}]\n    private_only: maybe\n",
            ":3: audience.private_only: must be true or false",
        ),
        ("audience: everyone\n", ":1: audience: must be a list of rules"),
    ],
)
def test_bad_audiences_name_file_line_and_key(tmp_path: Path, text: str, problem: str) -> None:
    write(tmp_path / "knowledge.yaml", text)

    overrides, problems = load_overrides(tmp_path)

    assert len(problems) == 1 and problems[0].startswith(str(tmp_path / "knowledge.yaml"))
    assert problem in problems[0]
    assert not overrides.valid and overrides.audience == (Rule(broken=True),)


def test_who_a_rule_lets_in() -> None:
    rule = Rule(slack_users=frozenset({ALICE}), discord_roles=frozenset({"HR"}))

    assert visible((rule,), Reader.alone("slack", ALICE))
    assert not visible((rule,), Reader("slack"))  # everyone
    assert not visible((rule,), Reader.members("discord", ["1", "2"]))  # roles count alone only
    assert visible((), EVERYONE)  # a public document
