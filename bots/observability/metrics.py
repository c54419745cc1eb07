"""Prometheus metrics of one bot process, served at `GET /metrics`.

Replies and reloads are counted as they happen (listeners on the chat service and the persona
registry); the engine's queue, the index sizes and the adapters are read at scrape time. Each
`Metrics` has a registry of its own, so several apps in one process (tests) never collide.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bots.chat.reply import ReplyRecord
from bots.persona.registry import ReloadEvent

if TYPE_CHECKING:
    from bots.runtime import Runtime

CONTENT_TYPE = CONTENT_TYPE_LATEST
CONNECTED = re.compile(r"\bconnected\b")
# Seconds: from a fast cached reply on a GPU to a long one on a small CPU.
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKENS_PER_S_BUCKETS = (5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)


class Metrics:
    """The counters and histograms of one app; `attach` connects them to it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.replies = Counter(
            "bots_replies",
            "Replies by persona, platform and outcome (stop, length, cancelled, error, "
            "declined, busy, rate_limited).",
            ["persona", "platform", "outcome"],
            registry=self.registry,
        )
        self.grounding = Counter(
            "bots_reply_grounding",
            "Strict personas' replies by what the grounding gate did (passed, trimmed, quoted, "
            "declined).",
            ["persona", "action"],
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "bots_completion_tokens",
            "Tokens generated, by persona.",
            ["persona"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "bots_reply_queue_wait_seconds",
            "Time a request waited for the engine.",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "bots_reply_ttft_seconds",
            "Time to the first token of a reply.",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.duration = Histogram(
            "bots_reply_duration_seconds",
            "Time from the message to the end of the reply.",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.tokens_per_s = Histogram(
            "bots_reply_tokens_per_second",
            "Generation speed of each reply (after its first token).",
            buckets=TOKENS_PER_S_BUCKETS,
            registry=self.registry,
        )
        self.reloads = Counter(
            "bots_persona_reloads",
            "Persona reloads since start, by outcome (loaded, error, removed).",
            ["persona", "outcome"],
            registry=self.registry,
        )

    def attach(self, app: Runtime) -> None:
        """Count the app's replies and reloads from now on; read its state at each scrape."""
        app.service.listeners.append(self.observe_reply)
        app.registry.add_listener(self.observe_reload)
        self.registry.register(_AppCollector(app))

    def observe_reply(self, record: ReplyRecord) -> None:
        self.replies.labels(record.persona_id, record.platform, record.outcome).inc()
        if record.gate:
            self.grounding.labels(record.persona_id, record.gate).inc()
        usage = record.usage
        if record.outcome in ("busy", "declined", "rate_limited"):
            return  # the engine never ran: no latency to record
        self.duration.observe(record.duration_ms / 1000)
        if usage.completion_tokens:
            self.completion_tokens.labels(record.persona_id).inc(usage.completion_tokens)
            self.queue_wait.observe(usage.queue_ms / 1000)
            self.ttft.observe(usage.ttft_ms / 1000)
            if usage.tokens_per_s > 0:
                self.tokens_per_s.observe(usage.tokens_per_s)

    def observe_reload(self, event: ReloadEvent) -> None:
        self.reloads.labels(event.persona_id, event.outcome).inc()

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


class _AppCollector(Collector):
    """Gauges read from the app at scrape time: engine queue, health, indexes, personas."""

    def __init__(self, app: Runtime) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        from bots.engine.process.supervisor import SupervisedEngine

        app = self._app
        engine = app.engine.status()
        for name, doc, value in (
            ("bots_engine_queue_depth", "Requests waiting for the engine.", engine.queue_depth),
            ("bots_engine_queue_capacity", "Requests the queue holds.", engine.queue_capacity),
            ("bots_engine_active", "Replies being generated.", engine.active),
            ("bots_engine_healthy", "1 when the engine can answer.", int(engine.healthy)),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        if isinstance(app.engine.current, SupervisedEngine):
            yield CounterMetricFamily(
                "bots_engine_restarts",
                "Restarts of the model worker process.",
                value=app.engine.current.restarts,
            )
        yield from _model_metrics(app)
        documents = GaugeMetricFamily(
            "bots_index_documents", "Documents in each knowledge index.", labels=["index"]
        )
        chunks = GaugeMetricFamily(
            "bots_index_chunks", "Chunks in each knowledge index.", labels=["index"]
        )
        for name, stats in app.knowledge.stats().items():
            documents.add_metric([name], stats.documents)
            chunks.add_metric([name], stats.chunks)
        yield documents
        yield chunks
        errors = GaugeMetricFamily(
            "bots_persona_errors",
            "Problems in each persona's files now (the last good version serves).",
            labels=["persona"],
        )
        for state in app.registry.states():
            errors.add_metric([state.id], len(state.errors))
        yield errors
        adapters = GaugeMetricFamily(
            "bots_adapter_connected", "1 when the adapter is connected.", labels=["adapter"]
        )
        for name, adapter_state in app.adapters.items():
            # "connected", an HTTP address, or "shard 0/2 connected, ..." (standby is 0).
            up = CONNECTED.search(adapter_state) or adapter_state.startswith("http")
            adapters.add_metric([name], int(bool(up)))
        yield adapters
        yield GaugeMetricFamily(
            "bots_database_up",
            "1 when the conversation store answered this instance's last heartbeat.",
            value=int(app.store.connected),
        )
        leases = GaugeMetricFamily(
            "bots_leases_held",
            "Leases this instance holds (Discord gateway shards, discord-shard:K/N).",
            labels=["lease"],
        )
        for lease in app.store.leases:
            leases.add_metric([lease], 1)
        yield leases
        yield from _rest_limit_metrics(app)


def _rest_limit_metrics(app: Runtime) -> Iterator[Metric]:
    """Discord REST rate limits shared with the other instances (PostgreSQL only)."""
    limits = app.store.rest_limits
    if limits is None:
        return
    yield CounterMetricFamily(
        "bots_rest_limit_blocks",
        "Spent REST buckets (or global limits) this instance shared with the others.",
        value=limits.blocks,
    )
    yield CounterMetricFamily(
        "bots_rest_limit_waits",
        "REST requests of this instance held back by a shared limit (any instance's).",
        value=limits.waits,
    )


def _model_metrics(app: Runtime) -> Iterator[Metric]:
    """Which model serves, the requests each model was given, whether the last switch failed."""
    state = app.engine.state()
    info = GaugeMetricFamily(
        "bots_model_info", "The model serving now (value 1).", labels=["model", "source"]
    )
    info.add_metric([state.name, state.source], 1)
    yield info
    requests = CounterMetricFamily(
        "bots_model_requests", "Generation requests each model was given.", labels=["model"]
    )
    for name, count in sorted(app.engine.requests().items()):
        requests.add_metric([name], count)
    yield requests
    yield CounterMetricFamily(
        "bots_model_switches", "Live model switches since start.", value=state.switches
    )
    yield GaugeMetricFamily(
        "bots_model_switch_failed",
        "1 while the last model switch failed (the old model serves on).",
        value=int(bool(state.error)),
    )
