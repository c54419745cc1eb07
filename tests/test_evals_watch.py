"""Evals re-run on save: `bots eval --watch` prints flips; the monitor coalesces, skips no-ops."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bots.evals.watch import EvalEvent, EvalMonitor
from bots.runtime import Runtime
from bots.settings import Settings
from tests.fakes.projects import HANDBOOK, persona_md, write
from tests.fakes.waiting import until

WAIT_S = 60.0
CITES_VACATION = (
    "- name: vacation\n  ask: How many vacation days do employees get?\n  cites: vacation.md\n"
)
STRICT_LIBRARIAN = persona_md(
    "You are the librarian. Answer only from the documents.",
    name="Libby",
    knowledge="[handbook]",
    grounding="strict",
    citations="true",
)


def wait_for_output(log: Path, text: str, proc: subprocess.Popen[bytes], after: int = 0) -> int:
    """Wait until `text` appears in the log after offset `after`; return the offset past it."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace")
        found = content.find(text, after)
        if found >= 0:
            return found + len(text)
        if proc.poll() is not None:
            raise AssertionError(f"bots eval --watch exited {proc.returncode}:\n{content}")
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared:\n{log.read_text(errors='replace')}")


def test_watch_prints_the_flips_of_each_save(project: Path) -> None:
    folder = project / "personas" / "librarian"
    write(folder / "evals.yaml", CITES_VACATION)
    log = project / "watch.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bots", "--personas", str(project / "personas"),
             "--knowledge", str(project / "knowledge"), "--data-dir", str(project / "data"),
             "eval", "--watch", "librarian", "--retrieval-only"],
            cwd=project, stdout=out, stderr=subprocess.STDOUT, env={**os.environ},
        )  # fmt: skip
    try:
        offset = wait_for_output(log, "watching", proc)
        assert "librarian: 1 passed" in log.read_text()
        # The edit: the librarian loses its library, so the vacation page is no longer cited.
        write(folder / "persona.md", persona_md("Answer only from documents.", grounding="strict"))
        offset = wait_for_output(
            log, "BROKE pass -> fail: vacation: cites vacation.md", proc, offset
        )
        write(folder / "persona.md", STRICT_LIBRARIAN)
        wait_for_output(log, "FIXED fail -> pass: vacation", proc, offset)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, log.read_text()


@pytest.fixture
async def watched_app(
    project: Path, settings_for: Callable[..., Settings]
) -> AsyncIterator[Runtime]:
    """The project's app with the real watcher but no model (retrieval-only runs)."""
    application = Runtime.create(settings_for(project))
    await application.start(watch=True, load_model=False)
    try:
        yield application
    finally:
        await application.close()


class Recorder:
    """Collects a monitor's events and lets a test wait for the next finished run."""

    def __init__(self) -> None:
        self.events: list[EvalEvent] = []
        self.finished = asyncio.Queue[EvalEvent]()

    def __call__(self, event: EvalEvent) -> None:
        self.events.append(event)
        if event.kind == "finished":
            self.finished.put_nowait(event)

    async def next_run(self) -> EvalEvent:
        return await asyncio.wait_for(self.finished.get(), WAIT_S)

    def started(self) -> int:
        return sum(1 for e in self.events if e.kind == "started")


async def monitor_for(app: Runtime) -> tuple[EvalMonitor, Recorder]:
    monitor = EvalMonitor(app, retrieval_only=True, personas=["librarian"])
    recorder = Recorder()
    monitor.add_listener(recorder)
    monitor.start()
    return monitor, recorder


async def test_library_document_edit_reruns_and_flips(watched_app: Runtime, project: Path) -> None:
    write(project / "personas" / "librarian" / "evals.yaml", CITES_VACATION)
    monitor, recorder = await monitor_for(watched_app)
    try:
        monitor.request("librarian", force=True)
        first = await recorder.next_run()
        assert first.run is not None and first.run.results[0].status == "pass" and first.flips == ()
        write(project / "knowledge" / "handbook" / "vacation.md", "# Parking\nPark in lot B.\n")
        second = await recorder.next_run()
        assert [str(f) for f in second.flips] == [
            "pass -> fail: vacation: cites vacation.md: not among the sources (none)"
        ]
        assert monitor.last("librarian") is second.run
    finally:
        await monitor.close()


async def test_noop_save_does_not_run_again(watched_app: Runtime, project: Path) -> None:
    write(project / "personas" / "librarian" / "evals.yaml", CITES_VACATION)
    monitor, recorder = await monitor_for(watched_app)
    loop = asyncio.get_running_loop()
    reported: set[str] = set()
    watched_app.add_file_listener(
        lambda paths: loop.call_soon_threadsafe(reported.update, {p.name for p in paths})
    )
    try:
        monitor.request("librarian", force=True)
        await recorder.next_run()
        source = project / "personas" / "librarian" / "persona.md"
        source.write_text(source.read_text())  # saved, unchanged
        vacation = project / "knowledge" / "handbook" / "vacation.md"
        vacation.write_text(HANDBOOK["vacation.md"].replace("        ", ""))
        # The watcher tells file listeners after the monitor (added first): once it has told
        # ours about both saves, the monitor has had its request; then wait for that run.
        await until(lambda: {"persona.md", "vacation.md"} <= reported, what="saves reported")
        await monitor.wait_idle()
        assert recorder.started() == 1
        # An evals.yaml edit is an input: it runs.
        write(
            project / "personas" / "librarian" / "evals.yaml", CITES_VACATION + "  max_chars: 9\n"
        )
        assert (await recorder.next_run()).run is not None
        assert recorder.started() == 2
    finally:
        await monitor.close()


async def test_requests_during_a_run_coalesce_into_one_more_run(
    watched_app: Runtime, project: Path
) -> None:
    write(project / "personas" / "librarian" / "evals.yaml", CITES_VACATION)
    monitor, recorder = await monitor_for(watched_app)

    def save_ten_times_while_running(event: EvalEvent) -> None:
        if event.kind == "started" and recorder.started() == 1:
            for _ in range(10):
                monitor.request("librarian", force=True)

    monitor.add_listener(save_ten_times_while_running)
    try:
        for _ in range(3):  # before the run starts: that run reads the files as they are then
            monitor.request("librarian", force=True)
        await monitor.wait_idle()
        assert recorder.started() == 2  # the first, and one for all the requests made meanwhile
        monitor.request("pirate", force=True)  # not watched by this monitor
        await monitor.wait_idle()
        assert recorder.started() == 2
    finally:
        await monitor.close()
