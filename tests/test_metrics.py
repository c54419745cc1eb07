"""Observability: JSON log lines (one per reply, figures only, secrets masked) and `/metrics` from
a real `bots serve` (replies by outcome, latency histograms, queue, indexes, reloads)."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path

import httpx

from bots.logs import REDACTED, JsonFormatter, RedactingFormatter
from tests.fakes.projects import HANDBOOK, persona_md, write
from tests.serve_process import ONE_THREAD, start_server

QUESTION = "What does the lighthouse keeper eat for breakfast on Sundays?"


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (labels in any order)."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return None


def wait_for_metric(url: str, name: str, **labels: str) -> str:
    """Poll /metrics until the sample exists and is non-zero; the whole text."""
    deadline = time.monotonic() + 15
    while True:
        text = httpx.get(url + "/metrics", timeout=30).text
        if metric(text, name, **labels):
            return text
        assert time.monotonic() < deadline, f"{name} {labels} never appeared"
        time.sleep(0.1)


def test_json_lines_carry_the_extras_and_never_a_secret() -> None:
    formatter = RedactingFormatter(JsonFormatter(), ["tok-1234567890", 'quo"ted-secret'])
    record = logging.LogRecord(
        "bots.x", logging.INFO, __file__, 1, "sent %s", ("tok-1234567890",), None
    )
    record.persona = "pirate"
    line = json.loads(formatter.format(record))
    assert line["message"] == f"sent {REDACTED}" and line["persona"] == "pirate"
    assert line["level"] == "INFO" and line["logger"] == "bots.x" and line["pid"] > 0
    try:
        raise ValueError('bad header quo"ted-secret')
    except ValueError:
        failed = logging.LogRecord("bots.x", logging.ERROR, __file__, 1, "oops", (), None)
        failed.exc_info = sys.exc_info()
    text = formatter.format(failed)
    assert "quo" not in text and REDACTED in json.loads(text)["exception"]


def test_serve_logs_one_json_line_per_reply_and_exports_metrics(tmp_path: Path) -> None:
    for name, content in HANDBOOK.items():
        write(tmp_path / "knowledge" / "handbook" / name, content)
    persona = tmp_path / "personas" / "pirate" / "persona.md"
    write(persona, persona_md("You are a pirate.", name="P", knowledge="[handbook]"))
    server = start_server(tmp_path, "--log-json", env=ONE_THREAD)
    try:
        body = {
            "model": "pirate",
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": 12,
            "user": "ann",
        }
        reply = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
        assert reply.status_code == 200
        outcome = reply.json()["choices"][0]["finish_reason"]
        tokens = reply.json()["usage"]["completion_tokens"]
        write(persona, persona_md("You are a pirate. Arr.", name="P", knowledge="[handbook]"))
        wait_for_metric(
            server.url, "bots_persona_reloads_total", persona="pirate", outcome="loaded"
        )
        write(persona, "---\nname: P\nbogus: 1\n---\nArr.\n")
        text = wait_for_metric(
            server.url, "bots_persona_reloads_total", persona="pirate", outcome="error"
        )
    finally:
        assert server.stop() == 0

    labels = {"persona": "pirate", "platform": "http", "outcome": outcome}
    assert metric(text, "bots_replies_total", **labels) == 1
    for histogram in ("ttft", "duration", "queue_wait"):
        assert metric(text, f"bots_reply_{histogram}_seconds_count") == 1
    assert metric(text, "bots_completion_tokens_total", persona="pirate") == tokens
    assert metric(text, "bots_engine_queue_capacity") == 32
    assert metric(text, "bots_engine_healthy") == 1
    assert metric(text, "bots_engine_restarts_total") == 0
    assert metric(text, "bots_index_documents", index="knowledge/handbook") == 3
    assert metric(text, "bots_persona_reloads_total", persona="pirate", outcome="loaded") == 1
    assert metric(text, "bots_persona_errors", persona="pirate") == 1
    assert metric(text, "bots_adapter_connected", adapter="http") == 1

    lines = [
        json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")
    ]
    [line] = [line for line in lines if line["message"].startswith("reply ")]
    assert line["persona"] == "pirate" and line["platform"] == "http"
    assert line["outcome"] == outcome and line["tokens"] == tokens
    assert line["ttft_ms"] >= 0 and line["duration_ms"] >= line["ttft_ms"] and "queue_ms" in line
    assert QUESTION not in server.log.read_text()
    assert reply.json()["choices"][0]["message"]["content"] not in server.log.read_text()
