"""What one `bots bench engine` run reports: rows of ours against the baselines measured alongside,
the machine they were measured on, and the Markdown table they are printed as."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Better = Literal["higher", "lower"]
OURS = "bots"
SERVER = "llama-server"
NAIVE = "naive"
# The quoting workload's extra baselines: each engine without and with n-gram speculation.
OURS_NO_SPEC = "bots, speculation off"
SERVER_NGRAM = "llama-server ngram-simple"
# The busy-machine workload's: bots keeping every configured thread.
OURS_FIXED_THREADS = "bots, threads fixed"


@dataclass(frozen=True)
class Target:
    """What a row should reach: `limit` times better than `baseline`, or, with no baseline, a
    figure of ours below `limit` (a lower-is-better quantity such as memory)."""

    limit: float
    baseline: str | None = None


@dataclass(frozen=True)
class Row:
    """One measured figure of ours against the baselines measured alongside it."""

    workload: str
    metric: str
    better: Better
    ours: float
    baselines: dict[str, float] = field(default_factory=dict)
    target: Target | None = None

    def ratio(self, baseline: str) -> float | None:
        """How many times better ours is (>1: better), whatever the metric's direction."""
        other = self.baselines.get(baseline)
        if other is None or other <= 0 or self.ours <= 0:
            return None
        return self.ours / other if self.better == "higher" else other / self.ours

    def verdict(self) -> str:
        """The target and whether this run met it: ">= 1.05x llama-server: missed"; "" without
        a target; "not measured" where its baseline did not run."""
        target = self.target
        if target is None:
            return ""
        if target.baseline is None:
            met: bool | None = self.ours < target.limit
            goal = f"< {target.limit:g}"
        else:
            ratio = self.ratio(target.baseline)
            met = None if ratio is None else ratio >= target.limit
            goal = f">= {target.limit:g}x {target.baseline}"
        return f"{goal}: {'not measured' if met is None else 'met' if met else 'missed'}"


@dataclass(frozen=True)
class Report:
    machine: str
    model: str
    notes: tuple[str, ...]
    rows: tuple[Row, ...]


def machine_description() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    return "n/a"


def gpu_description() -> str:
    """The GPU's name and memory as nvidia-smi reports them, where it is installed."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no nvidia-smi"
    query = [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    result = subprocess.run(query, capture_output=True, text=True, check=False)
    return result.stdout.strip().replace("\n", "; ") or "nvidia-smi printed nothing"


def format_report(report: Report) -> str:
    """One Markdown table; ratios say how many times better bots is (>1 = better).

    Columns: llama-server and naive, then any other baseline a row was measured against.
    """
    columns = [SERVER, NAIVE]
    for row in report.rows:
        columns += [name for name in row.baselines if name not in columns]
    lines = [
        f"bots bench engine: {report.machine}",
        f"model: {report.model}",
        *(f"note: {n}" for n in report.notes),
        "",
        "| workload | metric | bots | "
        + "".join(f"{name} | vs {name} | " for name in columns)
        + "target |",
        "|---|---|---:|" + "---:|---:|" * len(columns) + "---|",
    ]

    def fig(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    def times(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    for row in report.rows:
        cells = "".join(
            f"{fig(row.baselines.get(name))} | {times(row.ratio(name))} | " for name in columns
        )
        verdict = row.verdict()
        lines.append(f"| {row.workload} | {row.metric} | {fig(row.ours)} | {cells}{verdict} |")
    return "\n".join(lines)
