"""Operators can see the system: metrics from every process, JSON logs that follow a
transfer and hold no secrets, reconciliation on schedule, and restarts lose nothing."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from tests.conftest import wait_final
from tests.e2e.helpers import deposit, open_account, post_money
from tests.support.processes import ManagedWorker
from tests.support.receiver import Receiver
from workers.celery_app import make_celery

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("books")]
metric_wait_timeout_seconds = 30


def samples(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_metric(client: httpx.Client, name: str, minimum: float, **labels: str) -> float:
    deadline = time.monotonic() + metric_wait_timeout_seconds
    current = 0.0
    while time.monotonic() < deadline:
        current = value(samples(client), name, **labels)
        if current >= minimum:
            return current
        time.sleep(0.3)
    raise AssertionError(f"{name}{labels} stayed at {current}, expected >= {minimum}")


def test_metrics_include_the_workers_and_the_whole_system(
    client: httpx.Client, engine: Engine, receiver: Receiver, webhook_worker: Any
) -> None:
    before = samples(client)
    account = open_account(client)
    hook = client.post(
        "/v1/webhook-endpoints", json={"url": receiver.url("/m"), "account_ids": [account["id"]]}
    ).json()
    try:
        wait_final(engine, [deposit(client, account["id"], 77)["id"]])
        receiver.wait_for("/m", 1)
        posted = value(before, "ledger_transfers_finalized_total", status="posted")
        # Only worker processes post: seeing this through the API proves their metrics arrive.
        wait_metric(client, "ledger_transfers_finalized_total", posted + 1, status="posted")
        succeeded = value(before, "ledger_webhook_attempts_total", outcome="succeeded")
        wait_metric(client, "ledger_webhook_attempts_total", succeeded + 1, outcome="succeeded")
    finally:
        client.delete(f"/v1/webhook-endpoints/{hook['id']}")
    after = samples(client)
    accepted = value(after, "ledger_transfers_accepted_total", kind="deposit")
    assert accepted >= value(before, "ledger_transfers_accepted_total", kind="deposit") + 1
    assert value(after, "ledger_posting_latency_seconds_count") >= 1
    assert value(after, "ledger_posting_batch_size_count") >= 1
    assert (
        value(
            after, "ledger_http_requests_total", method="POST", route="/v1/deposits", status="202"
        )
        >= 1
    )
    assert (
        value(
            after, "ledger_http_request_duration_seconds_count", method="POST", route="/v1/deposits"
        )
        >= 1
    )
    assert ("ledger_queue_depth", (("queue", "transfers"),)) in after
    assert ("ledger_queue_depth", (("queue", "webhooks"),)) in after
    assert ("ledger_oldest_pending_transfer_age_seconds", ()) in after


def test_reconciliation_runs_in_the_worker_and_is_exported(
    client: httpx.Client, settings: Any
) -> None:
    celery = make_celery(settings.redis_url)
    try:
        celery.send_task("ledger.reconcile", queue="housekeeping")
    finally:
        celery.close()
    started = time.time()
    ran_at = wait_metric(client, "ledger_reconciliation_last_run_timestamp_seconds", started - 1)
    assert ran_at >= started - 1
    found = samples(client)
    rules = {labels[0][1] for (name, labels) in found if name == "ledger_reconciliation_violations"}
    assert "balance_differs_from_entries" in rules
    assert (
        value(found, "ledger_reconciliation_violations", rule="balance_differs_from_entries") == 0
    )


def test_logs_are_json_follow_a_transfer_and_hold_no_secret(
    client: httpx.Client, engine: Engine, log_dir: Path, admin_key: str
) -> None:
    account = open_account(client)
    response = client.post(
        "/v1/deposits",
        json={"account_id": account["id"], "amount": 3},
        headers={"Idempotency-Key": "logs-1", "X-Request-Id": "trace-logs-1"},
    )
    assert response.headers["X-Request-Id"] == "trace-logs-1"
    generated = client.get("/health").headers["X-Request-Id"]
    assert len(generated) == 32
    unsafe = client.get("/health", headers={"X-Request-Id": "bad id; drop"})
    assert unsafe.headers["X-Request-Id"] != "bad id; drop"
    transfer_id = response.json()["id"]
    wait_final(engine, [transfer_id])

    def lines(name: str) -> list[dict[str, Any]]:
        parsed = []
        for line in (log_dir / name).read_text().splitlines():
            if line.startswith("{"):
                parsed.append(json.loads(line))
        return parsed

    deadline = time.monotonic() + metric_wait_timeout_seconds
    worker_lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not worker_lines:
        worker_lines = [
            entry
            for name in ("transfers.log", *(p.name for p in log_dir.glob("transfers*.log")))
            for entry in lines(name)
            if transfer_id in entry.get("transfer_ids", [])
            and entry.get("event") == "posting batch committed"
        ]
        time.sleep(0.2)
    # The worker names the transfer in the line of the batch that posted it, under its
    # task; the API's line ties the transfer to the request that accepted it.
    assert worker_lines, "the worker logged nothing about the transfer"
    assert worker_lines[0]["task_id"]
    assert worker_lines[0]["task"] == "ledger.post_pending"
    api_lines = [e for e in lines("api.log") if e.get("request_id") == "trace-logs-1"]
    assert any(e.get("transfer_id") == transfer_id and e.get("status") == 202 for e in api_lines)

    for path in log_dir.glob("*.log"):
        content = path.read_text()
        assert admin_key not in content, path.name
        assert "whsec_" not in content.replace("whsec_[redacted]", ""), path.name


def test_worker_restart_under_load_loses_no_transfer(
    client: httpx.Client, engine: Engine, transfer_worker: ManagedWorker
) -> None:
    account = open_account(client)

    def send(n: int) -> str:
        return post_money(
            client, "/v1/deposits", {"account_id": account["id"], "amount": n}
        ).json()["id"]

    with ThreadPoolExecutor(16) as pool:
        first = list(pool.map(send, range(1, 101)))
        # SIGTERM: warm shutdown finishes the task in hand; unstarted ones go back to Redis.
        exit_code = transfer_worker.restart()
        second = list(pool.map(send, range(101, 151)))
    assert exit_code == 0
    statuses = wait_final(engine, first + second)
    assert set(statuses.values()) == {"posted"}
    with engine.connect() as connection:
        entries = connection.scalar(
            text("SELECT count(*) FROM entries WHERE account_id = :a"), {"a": account["id"]}
        )
    assert entries == 150
    assert client.get(f"/v1/accounts/{account['id']}").json()["balance"]["posted"] == sum(
        range(1, 151)
    )
