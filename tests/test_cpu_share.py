"""The decode thread count follows the cores other processes leave free (engine/cpu_share.py)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bots.engine.base import ChatMessage, GenerationRequest
from bots.engine.batched import BatchedEngine
from bots.engine.cpu_share import INTERVAL_S, CpuShare, CpuTimes, read_cpu_times
from tests.conftest import MakeEngine
from tests.fakes.engines import collect

CORES = 2
TICKS = 100  # per core and second


class Machine:
    """CPU counters as /proc would show them, advanced by the test: a second at a time, with
    `others` cores busy in other processes and `own` in this one."""

    def __init__(self) -> None:
        self.busy = self.total = self.own = 0
        self.now = 0.0

    def read(self) -> CpuTimes:
        return CpuTimes(self.busy, self.total, self.own)

    def second(self, *, others: float, own: float = 1.0, seconds: float = 1.0) -> None:
        self.total += int(CORES * TICKS * seconds)
        self.busy += int((others + own) * TICKS * seconds)
        self.own += int(own * TICKS * seconds)
        self.now += seconds


def share_on(machine: Machine, threads: int = CORES) -> CpuShare:
    return CpuShare(threads, cores=CORES, read=machine.read, clock=lambda: machine.now)


def test_one_thread_while_another_process_holds_a_core_and_both_again_when_it_stops() -> None:
    machine = Machine()
    share = share_on(machine)
    machine.second(others=0.0, own=2.0)
    assert share.threads() == 2
    machine.second(others=1.0)
    assert share.threads() == 1
    assert share.others == pytest.approx(1.0)
    machine.second(others=0.0, own=1.0)
    assert share.threads() == 2


def test_a_load_near_the_middle_does_not_switch_the_count_back_and_forth() -> None:
    machine = Machine()
    share = share_on(machine)
    machine.second(others=0.6)  # 1.4 cores free: rounds to 1, but within the margin
    assert share.threads() == 2
    machine.second(others=0.8)
    assert share.threads() == 1
    machine.second(others=0.4)  # 1.6 free: rounds to 2, within the margin again
    assert share.threads() == 1
    machine.second(others=0.2)
    assert share.threads() == 2


def test_never_more_than_configured_nor_fewer_than_one() -> None:
    machine = Machine()
    one = share_on(machine, threads=1)
    two = share_on(machine, threads=2)
    machine.second(others=0.0, own=0.0)
    assert one.threads() == 1
    machine.second(others=2.0, own=0.0)
    assert one.threads() == 1
    assert two.threads() == 1


def test_samples_at_most_once_an_interval() -> None:
    machine = Machine()
    share = share_on(machine)
    machine.second(others=1.0)
    assert share.threads() == 1
    machine.busy = machine.own  # no one else busy since: the counters say 2 cores free
    machine.total += CORES * TICKS
    machine.now += INTERVAL_S / 2
    assert share.threads() == 1  # too soon to look again
    machine.now += INTERVAL_S
    assert share.threads() == 2


def test_a_window_spanning_a_pause_of_the_engine_starts_a_new_one() -> None:
    machine = Machine()
    share = share_on(machine)
    share.pause()
    for _ in range(5):  # the engine idle while another process was busy: not a reason
        machine.second(others=1.0, own=0.0)
    assert share.threads() == 2
    machine.second(others=1.0)  # busy now, measured over one second of the engine's work
    assert share.threads() == 1


def test_replies_shorter_than_the_interval_add_up_to_a_window() -> None:
    machine = Machine()
    share = share_on(machine)
    for others, wanted in ((1.0, 1), (0.0, 2)):
        for _ in range(2):  # two replies of 0.3 s each, idle a second between them
            share.threads()
            machine.second(others=others, seconds=0.3)
            counted = share.threads()
            share.pause()
            machine.second(others=0.0, own=0.0)
        assert counted == wanted, f"others at {others} cores"
        assert share.others == pytest.approx(others)


def test_without_proc_the_configured_count_stays() -> None:
    share = CpuShare(2, cores=CORES, read=lambda: None)
    assert share.threads() == 2


def test_proc_counters_of_this_machine(tmp_path: Path) -> None:
    before = read_cpu_times()
    assert before is not None
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    after = read_cpu_times()
    assert after is not None
    assert 0 <= after.busy <= after.total
    assert after.own - before.own >= 10  # 0.2 s of this process at 100 ticks a second
    assert read_cpu_times(tmp_path) is None  # no /proc there


@pytest.fixture
def busy_cores() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Other processes keeping all but one core busy, started by the test; killed after."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def _request(text: str) -> GenerationRequest:
    messages = (ChatMessage("system", "You answer office questions."), ChatMessage("user", text))
    return GenerationRequest(messages, max_tokens=24, temperature=0.0)


OTHERS = re.compile(r"(\d+) of (\d+) threads \(other processes use ([\d.]+) cores\)")


def _others(engine: BatchedEngine) -> float | None:
    """The cores other processes use, as status shows it while the engine has fewer threads."""
    found = OTHERS.search(engine.status().detail)
    return float(found.group(3)) if found else None


async def _ask_until(
    engine: BatchedEngine, done: Callable[[float | None], bool], question: str, what: str
) -> str:
    """Ask until `done` holds for the load status reports (None: all threads); the last reply."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text, _ = await collect(engine, _request(question))
        if done(_others(engine)):
            return text
        await asyncio.sleep(INTERVAL_S)
    raise AssertionError(f"status never showed {what}: {engine.status().detail}")


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux /proc")
async def test_the_engine_yields_a_core_to_a_busy_process_with_the_same_replies(
    make_engine: MakeEngine, busy_cores: list[subprocess.Popen[bytes]]
) -> None:
    cores = os.cpu_count() or 1
    if cores < 2:
        pytest.skip("one core: there is no thread to give up")
    engine = await make_engine(n_threads=cores)
    question = "How do I book a meeting room?"
    quiet, _ = await collect(engine, _request(question))
    for _ in range(cores - 1):
        busy_cores.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
    # The busy processes alone use cores - 1; whatever else the machine runs (a VM host's steal
    # time included) comes on top.
    during = await _ask_until(
        engine, lambda others: others is not None and others >= cores - 1.5, question, "the load"
    )
    assert f"1 of {cores} threads" in engine.status().detail
    loaded = _others(engine)
    assert loaded is not None
    for proc in busy_cores:
        proc.kill()
        proc.wait()
    busy_cores.clear()
    # All threads come back once the machine is quiet; on one that stays busy with something
    # else, the engine must at least have seen the test's processes go.
    after = await _ask_until(
        engine,
        lambda others: others is None or others <= loaded - (cores - 1) + 0.5,
        question,
        "the busy processes gone",
    )
    # llama.cpp splits rows between threads, never a sum: the thread count changes no reply.
    assert quiet == during == after
