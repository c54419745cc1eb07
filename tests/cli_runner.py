"""The `bots` command through click's runner, on a test project (see conftest's `project`)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from bots.cli import main


def run_cli(
    project: Path, *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Exit code and output of `bots ARGS` on `project`, with the simple engine and a 4k context
    (quick to load; the commands that generate do not need more)."""
    result = CliRunner().invoke(
        main,
        [
            "--personas", str(project / "personas"),
            "--knowledge", str(project / "knowledge"),
            "--data-dir", str(project / "data"),
            "--engine", "simple",
            *args,
        ],
        input=input,
        env={"BOTS_MODEL_N_CTX": "4096", **(env or {})},
    )  # fmt: skip
    return result.exit_code, result.output
