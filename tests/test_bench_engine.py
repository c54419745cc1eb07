"""`bots bench engine` on a tiny workload: every section runs on the real engines and lands in
one table; the workload generator is reproducible."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest
from click.testing import CliRunner

from bots.bench.engine import run_engine_bench, stream_counts
from bots.bench.engine_report import (
    NAIVE,
    OURS_FIXED_THREADS,
    OURS_NO_SPEC,
    SERVER,
    Row,
    Target,
    format_report,
)
from bots.bench.engine_workloads import Workload
from bots.bench.llama_server import llama_cpp_python_version
from bots.bench.workload import interleaved_schedule, persona_instructions
from bots.cli import main

TINY = Workload(
    single_prompt_tokens=64,
    single_reply_tokens=4,
    single_repeats=1,
    persona_tokens=64,
    personas=2,
    conversations=2,
    turns=2,
    knowledge_tokens=16,
    reply_tokens=4,
    naive_messages=2,
    followup_pause_s=0.3,
    concurrency=(2,),
    concurrency_prompt_tokens=32,
    concurrency_reply_tokens=4,
    concurrency_repeats=1,
    memory_personas=2,
    quoting_questions=1,
    quoting_reply_tokens=4,
    busy_streams=(2,),
    busy_repeats=1,
)


def words(text: str) -> int:
    return len(text.split())


def test_workload_is_reproducible_and_keeps_each_conversation_in_order() -> None:
    first = interleaved_schedule(3, 4, 3, 20, words, seed=5)
    assert first == interleaved_schedule(3, 4, 3, 20, words, seed=5)
    assert first != interleaved_schedule(3, 4, 3, 20, words, seed=6)
    for conversation in range(4):
        turns = [t.turn for t in first if t.conversation == conversation]
        assert turns == [0, 1, 2]
    a, b = (persona_instructions(i, 50, words) for i in (0, 1))
    assert words(a) >= 50 and a.split()[0] != b.split()[0]


def test_ratios_say_how_many_times_better_whatever_the_direction() -> None:
    faster = Row("w", "tok/s", "higher", 150.0, {SERVER: 100.0})
    quicker = Row("w", "ms", "lower", 50.0, {NAIVE: 500.0})
    assert faster.ratio(SERVER) == 1.5 and faster.ratio(NAIVE) is None
    assert quicker.ratio(NAIVE) == 10.0


def test_a_row_says_whether_its_target_was_met() -> None:
    ahead = Row("w", "tok/s", "higher", 106.0, {SERVER: 100.0}, Target(1.05, SERVER))
    behind = Row("w", "ms", "lower", 60.0, {SERVER: 100.0}, Target(2.0, SERVER))
    alone = Row("w", "tok/s", "higher", 106.0, {}, Target(1.05, SERVER))
    memory = Row("m", "MB", "lower", 101.0, {}, Target(100.0))
    assert ahead.verdict() == ">= 1.05x llama-server: met"
    assert behind.verdict() == ">= 2x llama-server: missed"
    assert alone.verdict() == ">= 1.05x llama-server: not measured"
    assert memory.verdict() == "< 100: missed"
    assert Row("w", "ms", "lower", 1.0).verdict() == ""


async def test_bench_runs_every_section_and_prints_one_table() -> None:
    progress = io.StringIO()
    report = await run_engine_bench(workload=TINY, with_server=False, progress=progress)
    sections = {row.workload.split(" (")[0] for row in report.rows}
    assert {"single stream", "follow-up TTFT", "2 concurrent streams", "memory"} <= sections
    paused = [r for r in report.rows if "0.3 s to write each" in r.workload]
    assert len(paused) == 2 and NAIVE not in paused[0].baselines
    quoting = [r for r in report.rows if r.workload.startswith("answers quoting")]
    assert quoting and quoting[0].baselines[OURS_NO_SPEC] > 0
    single = [r for r in report.rows if r.workload == "single stream"]
    assert all(r.ours > 0 and r.baselines[NAIVE] > 0 for r in single)
    table = format_report(report)
    assert "cores" in report.machine and "SmolLM2" in report.model
    assert table.count("\n|") == len(report.rows) + 2  # header and separator lines
    busy = [r for r in report.rows if r.workload.startswith("busy machine")]
    assert busy and busy[0].ours > 0 and busy[0].baselines[OURS_FIXED_THREADS] > 0
    assert "7/7 memory" in progress.getvalue()


def test_build_server_takes_cmake_options_from_the_command_line(tmp_path: Path) -> None:
    # A build already in the cache is reused, so this checks the command line, not a compile.
    binary = tmp_path / llama_cpp_python_version() / "bin" / "llama-server"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    cache = ["--cache-dir", str(tmp_path)]
    runner = CliRunner()
    built = runner.invoke(main, ["bench", "build-server", *cache, "-DGGML_CUDA=ON", "--jobs", "2"])
    assert built.exit_code == 0, built.output
    assert built.output.strip() == str(binary)
    wrong = runner.invoke(main, ["bench", "build-server", *cache, "--cuda"])
    assert wrong.exit_code == 2
    assert "unrecognized arguments: --cuda (cmake options start with -D)" in wrong.output


def test_stream_counts_are_positive_integers() -> None:
    assert stream_counts("1,4,16,64") == (1, 4, 16, 64)
    for bad in ("", "1,x", "0,4", "4,-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected counts like 1,4,16,64"):
            stream_counts(bad)


def test_bench_engine_hands_its_options_to_its_own_parser() -> None:
    refused = CliRunner().invoke(main, ["bench", "engine", "--quick", "--streams", "0,4"])
    assert refused.exit_code == 2
    assert "--streams: '0,4': expected counts like 1,4,16,64" in refused.output
