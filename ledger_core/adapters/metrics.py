"""Prometheus metrics. Every process records into PROMETHEUS_MULTIPROC_DIR when it is set
(gunicorn workers, Celery pool processes), and /metrics or a worker's exporter reads the
directory; gauges that describe the whole system are computed at scrape time instead."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text

from ledger_core.config import posting_queue
from ledger_core.domain.webhooks import ATTEMPT_OUTCOMES

LATENCY_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
RECONCILIATION_KEY = "ledger:reconciliation:last"


def _queues() -> tuple[str, ...]:
    shards = int(os.environ.get("POSTING_SHARDS", "1"))
    return (*(posting_queue(shard, shards) for shard in range(shards)), "webhooks", "housekeeping")


QUEUES = _queues()

http_requests_total = Counter(
    "ledger_http_requests_total",
    "HTTP requests by route and status.",
    ["method", "route", "status"],
)
http_request_duration_seconds = Histogram(
    "ledger_http_request_duration_seconds",
    "HTTP request latency by route.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS_SECONDS,
)
transfers_accepted_total = Counter(
    "ledger_transfers_accepted_total", "Transfers accepted as PENDING, by kind.", ["kind"]
)
transfers_finalized_total = Counter(
    "ledger_transfers_finalized_total", "Transfers posted or rejected.", ["status"]
)
posting_latency_seconds = Histogram(
    "ledger_posting_latency_seconds",
    "Time from acceptance to final status.",
    buckets=LATENCY_BUCKETS_SECONDS,
)
posting_batch_size = Histogram(
    "ledger_posting_batch_size", "Transfers per posting transaction.", buckets=BATCH_SIZE_BUCKETS
)
posting_batch_duration_seconds = Histogram(
    "ledger_posting_batch_duration_seconds",
    "Time to claim, post and commit one batch.",
    buckets=LATENCY_BUCKETS_SECONDS,
)
posting_failures_total = Counter(
    "ledger_posting_failures_total",
    "Posting failures not about money: batch (isolated), transfer (counted towards"
    " quarantine), quarantined, systematic (every transfer failed alone).",
    ["kind"],
)
background_errors_total = Counter(
    "ledger_background_errors_total",
    "After-commit work that failed: wake (a posting wake-up not published; the sweeper"
    " covers it), enqueue (a webhook delivery not published; the scheduler covers it),"
    " cache_write (an idempotent answer not copied to Redis), job (another job),"
    " dropped (queue full).",
    ["kind"],
)
# Declared at zero, so that an alert on their rate has a series before the first failure.
BACKGROUND_ERROR_KINDS = ("wake", "enqueue", "cache_write", "job", "dropped")
for _kind in BACKGROUND_ERROR_KINDS:
    background_errors_total.labels(_kind)
webhook_attempts_total = Counter(
    "ledger_webhook_attempts_total", "Webhook delivery attempts by outcome.", ["outcome"]
)
# Every outcome at zero from the first scrape, in every process that imports this: a rate or
# an alert on an outcome that has not happened yet reads 0, not "no data".
for _outcome in ATTEMPT_OUTCOMES:
    webhook_attempts_total.labels(_outcome)


class PrometheusMetrics:
    """The service layer's Metrics port."""

    def transfers_finalized(
        self, counts_by_status: Mapping[str, int], latencies_seconds: Sequence[float]
    ) -> None:
        for status, count in counts_by_status.items():
            transfers_finalized_total.labels(status).inc(count)
        for latency in latencies_seconds:
            posting_latency_seconds.observe(latency)

    def posting_batch(self, size: int, duration_seconds: float) -> None:
        posting_batch_size.observe(size)
        posting_batch_duration_seconds.observe(duration_seconds)

    def posting_failed(self, kind: str) -> None:
        posting_failures_total.labels(kind).inc()

    def webhook_attempt(self, outcome: str) -> None:
        webhook_attempts_total.labels(outcome).inc()


class SystemCollector(Collector):
    """Gauges read at scrape time from PostgreSQL and Redis: true for the whole system,
    whichever process serves them."""

    def __init__(self, engine: Engine, redis: Any, broker_redis: Any) -> None:
        """`redis` holds the last reconciliation; `broker_redis` the queues (None when
        the broker is not Redis: no depth gauge then)."""
        self._engine = engine
        self._redis = redis
        self._broker_redis = broker_redis

    def collect(self) -> Iterator[GaugeMetricFamily]:
        oldest = GaugeMetricFamily(
            "ledger_oldest_pending_transfer_age_seconds",
            "Age of the oldest PENDING transfer (0 when none).",
        )
        try:
            with self._engine.connect() as connection:
                age = connection.scalar(
                    text(
                        "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)"
                        " FROM transfers WHERE status = 'pending'"
                    )
                )
            oldest.add_metric([], float(age))
            yield oldest
        except Exception:  # noqa: S110 (a scrape must not fail because one source is down)
            pass
        depth = GaugeMetricFamily(
            "ledger_queue_depth", "Tasks waiting in a queue.", labels=["queue"]
        )
        violations = GaugeMetricFamily(
            "ledger_reconciliation_violations",
            "Rows breaking each books rule at the last reconciliation.",
            labels=["rule"],
        )
        last_run = GaugeMetricFamily(
            "ledger_reconciliation_last_run_timestamp_seconds",
            "When the last reconciliation ran (Unix seconds).",
        )
        try:
            if self._broker_redis is not None:
                for queue in QUEUES:
                    depth.add_metric([queue], float(self._broker_redis.llen(queue)))
                yield depth
        except Exception:  # noqa: S110 (same)
            pass
        try:
            raw = self._redis.get(RECONCILIATION_KEY)
            if raw is not None:
                report = json.loads(raw)
                for rule, count in report["violations"].items():
                    violations.add_metric([rule], float(count))
                last_run.add_metric([], float(report["ran_at"]))
                yield violations
                yield last_run
        except Exception:  # noqa: S110 (same)
            pass


def publish_reconciliation(redis: Any, violations: dict[str, int]) -> None:
    redis.set(RECONCILIATION_KEY, json.dumps({"violations": violations, "ran_at": time.time()}))


class _ThisProcess(Collector):
    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()


def registry_for_scrape(extra: Collector | None = None) -> CollectorRegistry:
    """Every process's metrics when PROMETHEUS_MULTIPROC_DIR is set, else this process's;
    plus `extra`. A new registry each time, so apps built in one process never clash."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    if extra is not None:
        registry.register(extra)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
