"""The session's secret scan (tests/secret_scan.py) works: it knows the secrets the tests build
and finds one planted in a log. The scan of the whole session runs when the session ends."""

from __future__ import annotations

from pathlib import Path

from bots.settings import DiscordSettings, SlackSettings, load_settings
from tests.secret_scan import find_leaks, known_secrets


def test_secrets_of_settings_built_by_tests_are_registered(tmp_path: Path) -> None:
    SlackSettings(bot_token="xoxb-registered-by-construction", signing_secret="sig-0123456789")
    DiscordSettings(persona_tokens=("tutor=persona-token-0123456789",))
    load_settings(tmp_path, environ={"BOTS_API_TOKEN": "api-token-from-the-environment"})
    assert {
        "xoxb-registered-by-construction",
        "sig-0123456789",
        "tutor=persona-token-0123456789",
        "api-token-from-the-environment",
    } <= known_secrets()


def test_scan_reports_the_file_and_line_of_a_leak_without_the_secret(tmp_path: Path) -> None:
    secret = "xoxb-planted-0123456789"
    clean = tmp_path / "clean.log"
    clean.write_text("INFO all fine\n")
    leaky = tmp_path / "leaky.log"
    leaky.write_text(f"INFO start\nDEBUG header Authorization: Bearer {secret}\n")
    [leak] = find_leaks([clean, leaky], [secret, "never-logged-0123456789"])
    assert (leak.path, leak.line) == (leaky, 2)
    assert secret not in leak.secret_hint and leak.secret_hint.startswith("xoxb")
