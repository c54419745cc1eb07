"""The progress of long runs: a bar on a terminal, log lines elsewhere, nothing for short runs."""

from __future__ import annotations

import io
import logging

import pytest

import bots.progress as progress
from bots.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(stream: io.StringIO, total: int, logger: logging.Logger) -> Progress:
    bar = Progress("knowledge docs: embedding", total, "chunks", logger=logger, stream=stream)
    for _ in range(total):
        bar.advance()
    bar.finish()
    return bar


def test_a_short_run_shows_nothing(caplog: pytest.LogCaptureFixture) -> None:
    terminal = Terminal()
    with caplog.at_level(logging.INFO):
        run(terminal, 50, logging.getLogger("t"))

    assert terminal.getvalue() == ""
    assert caplog.text == ""


def test_a_long_run_draws_one_line_in_place_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.0)
    terminal = Terminal()
    with caplog.at_level(logging.INFO):
        run(terminal, 4, logging.getLogger("t"))

    drawn = terminal.getvalue()
    assert drawn.startswith("\rknowledge docs: embedding [")
    assert drawn.endswith("] 4/4 chunks, 0 s\n") and drawn.count("\n") == 1
    assert f"[{'#' * progress.BAR_WIDTH}]" in drawn
    assert caplog.text == ""


def test_elsewhere_a_long_run_logs_its_start_and_its_end(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.0)
    pipe = io.StringIO()
    with caplog.at_level(logging.INFO):
        run(pipe, 4, logging.getLogger("t"))

    assert pipe.getvalue() == ""
    assert [r.getMessage().split("] ")[1] for r in caplog.records] == [
        "1/4 chunks, 0 s (0 s left)",
        "4/4 chunks, 0 s",
    ]


def test_a_second_run_while_one_draws_logs_instead(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.0)
    terminal = Terminal()
    first = Progress("a", 2, "files", logger=logging.getLogger("t"), stream=terminal)
    first.advance()
    with caplog.at_level(logging.INFO):
        run(terminal, 2, logging.getLogger("t"))
    first.advance()
    first.finish()

    assert terminal.getvalue().count("\ra [") >= 2 and "\rknowledge" not in terminal.getvalue()
    assert "2/2 chunks" in caplog.text


def test_the_estimate_of_what_is_left_follows_the_pace() -> None:
    bar = Progress("x", 10, "files", logger=logging.getLogger("t"))
    bar.done = 2

    assert bar.line(4.0) == "x [#####                   ] 2/10 files, 4 s (16 s left)"
