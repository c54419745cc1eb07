"""Persona format and validation: errors name file, line and key; no input crashes the loader."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bots.persona.file_read import LEASES
from bots.persona.loader import load_persona
from bots.persona.model import PersonaInvalid
from bots.persona.registry import PersonaRegistry
from bots.persona.scaffold import ScaffoldError, new_persona
from tests.fakes.projects import persona_md, write

LIBRARIES = ("handbook",)


def errors_of(folder: Path) -> list[tuple[int, str, str]]:
    with pytest.raises(PersonaInvalid) as caught:
        load_persona(folder, LIBRARIES)
    return [(e.line, e.key, e.message) for e in caught.value.errors]


def test_full_front_matter_is_loaded(tmp_path: Path) -> None:
    write(tmp_path / "ada" / "avatar.png", "png")
    write(
        tmp_path / "ada" / "persona.md",
        """\
        ---
        name: Ada
        description: Handbook librarian
        avatar: avatar.png
        greeting: Hi!
        starters: ["How many vacation days?"]
        knowledge: [handbook]
        grounding: strict
        citations: true
        model: {temperature: 0.2, max_tokens: 100}
        discord: {channels: [123456789012345678]}
        slack: {channels: [C0123ABCD]}
        access: {users: [U1], roles: [staff]}
        ---
        You are Ada.
        """,
    )
    persona = load_persona(tmp_path / "ada", LIBRARIES)
    assert persona.id == "ada" and persona.display_name == "Ada"
    assert persona.knowledge == ("handbook",) and persona.grounding == "strict"
    assert persona.sampling.temperature == 0.2 and persona.sampling.max_tokens == 100
    assert persona.discord_channels == ("123456789012345678",)
    assert persona.slack_channels == ("C0123ABCD",)
    assert persona.access.users == ("U1",) and persona.access.roles == ("staff",)
    assert persona.instructions == "You are Ada."
    assert persona.avatar == tmp_path / "ada" / "avatar.png"


def test_body_only_file_is_a_persona(tmp_path: Path) -> None:
    write(tmp_path / "plain" / "persona.md", "Just instructions.\n")
    assert load_persona(tmp_path / "plain", LIBRARIES).instructions == "Just instructions."


def test_unknown_key_names_line_and_key(tmp_path: Path) -> None:
    write(tmp_path / "p" / "persona.md", "---\nname: A\ncolour: blue\n---\nBody\n")
    [(line, key, message)] = errors_of(tmp_path / "p")
    assert (line, key) == (3, "colour") and "unknown key" in message


def test_wrong_type_names_line_and_key(tmp_path: Path) -> None:
    write(tmp_path / "p" / "persona.md", "---\nname: A\ncitations: maybe\n---\nBody\n")
    [(line, key, message)] = errors_of(tmp_path / "p")
    assert (line, key) == (3, "citations") and "true or false" in message


def test_nested_key_error_names_dotted_key_and_its_line(tmp_path: Path) -> None:
    write(
        tmp_path / "p" / "persona.md",
        "---\nname: A\nmodel:\n  temperature: 0.2\n  max_tokens: lots\n---\nBody\n",
    )
    [(line, key, message)] = errors_of(tmp_path / "p")
    assert (line, key) == (5, "model.max_tokens") and "integer" in message


def test_out_of_range_number(tmp_path: Path) -> None:
    write(tmp_path / "p" / "persona.md", "---\nmodel: {temperature: 9}\n---\nBody\n")
    [(line, key, message)] = errors_of(tmp_path / "p")
    assert (line, key) == (2, "model.temperature") and "between" in message


def test_bad_yaml_names_line(tmp_path: Path) -> None:
    write(tmp_path / "p" / "persona.md", "---\nname: A\nstarters: [one, two\n---\nBody\n")
    [(line, _key, message)] = errors_of(tmp_path / "p")
    assert line >= 3 and "bad YAML" in message


def test_unknown_library_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "p" / "persona.md", "---\nknowledge: [handbook, recipes]\n---\nBody\n")
    [(line, key, message)] = errors_of(tmp_path / "p")
    assert (line, key) == (2, "knowledge") and "recipes" in message


@pytest.mark.parametrize("name", ["..", "../etc", "/etc", "a/b"])
def test_library_names_cannot_escape(tmp_path: Path, name: str) -> None:
    write(tmp_path / "p" / "persona.md", f'---\nknowledge: ["{name}"]\n---\nBody\n')
    [(_, key, _)] = errors_of(tmp_path / "p")
    assert key == "knowledge"


def test_empty_body_and_unclosed_front_matter(tmp_path: Path) -> None:
    write(tmp_path / "p" / "persona.md", "---\nname: A\n---\n\n")
    assert "empty" in errors_of(tmp_path / "p")[0][2]
    write(tmp_path / "q" / "persona.md", "---\nname: A\nBody\n")
    assert "never closed" in errors_of(tmp_path / "q")[0][2]


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    write(tmp_path / "p" / "persona.md", "---\nfoo: 1\ncitations: 3\ngrounding: loose\n---\nB\n")
    assert [key for _, key, _ in errors_of(tmp_path / "p")] == ["foo", "citations", "grounding"]


def test_binary_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "persona.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff")
    assert errors_of(tmp_path / "p")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300).map(str.encode),
        st.builds(
            lambda header, body: f"---\n{header}\n---\n{body}".encode(),
            st.text(alphabet=st.sampled_from(list("abc:-[]{}\n \"'#&*!|>0123.")), max_size=120),
            st.text(max_size=40),
        ),
    )
)
def test_no_input_crashes_the_loader(tmp_path: Path, raw: bytes) -> None:
    folder = tmp_path / "fuzz"
    folder.mkdir(exist_ok=True)
    (folder / "persona.md").write_bytes(raw)
    try:
        load_persona(folder, LIBRARIES)
    except PersonaInvalid as exc:
        assert exc.errors and all(str(e).startswith(str(folder / "persona.md")) for e in exc.errors)


def test_registry_keeps_last_good_and_clears_error(tmp_path: Path) -> None:
    path = write(tmp_path / "bot" / "persona.md", persona_md("Version one."))
    registry = PersonaRegistry(tmp_path, lambda: LIBRARIES)
    registry.load_all()
    assert registry.get("bot").instructions == "Version one."  # type: ignore[union-attr]
    path.write_text("---\nname: [unclosed\n---\nVersion two.\n")
    assert registry.reload("bot") == "error"
    assert registry.get("bot").instructions == "Version one."  # type: ignore[union-attr]
    assert registry.errors() and registry.errors()[0].line == 2
    path.write_text(persona_md("Version three."))
    assert registry.reload("bot") == "loaded"
    assert registry.get("bot").instructions == "Version three."  # type: ignore[union-attr]
    assert registry.errors() == []


def test_registry_skips_unchanged_content(tmp_path: Path) -> None:
    path = write(tmp_path / "bot" / "persona.md", persona_md("Same."))
    registry = PersonaRegistry(tmp_path, lambda: LIBRARIES)
    registry.load_all()
    path.write_text(persona_md("Same."))
    assert registry.reload("bot") == "unchanged"


@pytest.mark.skipif(not LEASES, reason="only Linux tells whether a file is open for writing")
def test_registry_never_loads_a_file_still_open_for_writing(tmp_path: Path) -> None:
    # A reload may start between an editor's truncate and its last write (the watcher's view of
    # open writers lags): the valid-looking first part of an over-limit save is no version.
    path = write(tmp_path / "bot" / "persona.md", persona_md("Version one."))
    registry = PersonaRegistry(tmp_path, lambda: LIBRARIES)
    registry.load_all()
    huge = persona_md("x" * 300_000)
    with path.open("w") as writer:
        writer.write(huge[:100_000])
        writer.flush()
        assert registry.reload("bot") == "unchanged"
        assert registry.get("bot").instructions == "Version one."  # type: ignore[union-attr]
        writer.write(huge[100_000:])
    assert registry.reload("bot") == "error"
    assert registry.get("bot").instructions == "Version one."  # type: ignore[union-attr]
    assert "the limit is" in registry.errors()[0].message


def test_registry_drops_deleted_and_refuses_escaping_symlink(tmp_path: Path) -> None:
    root = tmp_path / "personas"
    write(root / "bot" / "persona.md", persona_md())
    outside = write(tmp_path / "elsewhere" / "persona.md", persona_md("Stolen instructions."))
    (root / "sneaky").mkdir()
    (root / "sneaky" / "persona.md").symlink_to(outside)
    (root / "linked").symlink_to(outside.parent, target_is_directory=True)
    registry = PersonaRegistry(root, lambda: LIBRARIES)
    registry.load_all()
    assert [p.id for p in registry.personas()] == ["bot"]
    (root / "bot" / "persona.md").unlink()
    assert registry.reload("bot") == "removed"
    assert registry.personas() == []


def test_scaffold_creates_a_valid_persona(tmp_path: Path) -> None:
    path = new_persona(tmp_path, "tutor")
    persona = load_persona(path.parent, LIBRARIES)
    assert persona.display_name == "Tutor" and persona.starters
    with pytest.raises(ScaffoldError):
        new_persona(tmp_path, "tutor")
    with pytest.raises(ScaffoldError):
        new_persona(tmp_path, "Bad Name")
