"""Posting, delivery and housekeeping tasks. Each is idempotent: running it twice changes
nothing more than running it once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import redis
import structlog
from celery import shared_task
from sqlalchemy.exc import DBAPIError

from ledger_core.adapters.database import make_engine
from ledger_core.adapters.metrics import PrometheusMetrics, publish_reconciliation
from ledger_core.adapters.sql import SqlUnitOfWork
from ledger_core.adapters.webhook_http import AddressGuard, HttpxSender
from ledger_core.config import Settings
from ledger_core.service_layer import ledger, reconcile, webhooks
from ledger_core.service_layer.ports import UnitOfWorkFactory
from workers.celery_app import (
    DELIVER_WEBHOOK_TASK,
    POST_TRANSFER_TASK,
    REQUEST_ID_HEADER,
    TRANSFERS_QUEUE,
    WEBHOOKS_QUEUE,
)

log = structlog.get_logger(__name__)
METRICS = PrometheusMetrics()

posting_retries_max = 10
posting_retry_backoff_max_seconds = 60


@dataclass
class _Process:
    """What one worker process builds once: a pool inherited across fork would share
    sockets, so everything is made lazily in the process that uses it."""

    pid: int
    settings: Settings
    uow_factory: UnitOfWorkFactory
    sender: HttpxSender | None = None


_process: _Process | None = None


def _current() -> _Process:
    global _process  # noqa: PLW0603 (a per-process cache is the point)
    if _process is None or _process.pid != os.getpid():
        settings = Settings()
        _process = _Process(os.getpid(), settings, partial(SqlUnitOfWork, make_engine(settings)))
    return _process


def _enqueue_deliveries(delivery_ids: list[str]) -> None:
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    for delivery_id in delivery_ids:
        deliver_webhook.apply_async(
            args=[delivery_id], queue=WEBHOOKS_QUEUE, headers={REQUEST_ID_HEADER: request_id}
        )


@shared_task(
    name=POST_TRANSFER_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    # Lost connections, deadlocks and lock timeouts are worth another try; the
    # transfer stays PENDING meanwhile, and the sweeper catches it if retries run out.
    autoretry_for=(DBAPIError,),
    retry_backoff=True,
    retry_backoff_max=posting_retry_backoff_max_seconds,
    retry_jitter=True,
    max_retries=posting_retries_max,
)
def post_transfer(transfer_id: str) -> None:
    structlog.contextvars.bind_contextvars(transfer_id=transfer_id)
    process = _current()
    outcomes = ledger.post_transfers(
        process.uow_factory,
        [transfer_id],
        enqueue_deliveries=_enqueue_deliveries,
        webhook_requeue_after_seconds=process.settings.webhook_requeue_after_seconds,
        metrics=METRICS,
    )
    for outcome in outcomes:
        log.info("transfer finalized", outcome=type(outcome).__name__.lower())


@shared_task(name="ledger.sweep_pending_transfers", acks_late=True)
def sweep_pending_transfers() -> int:
    """Re-enqueue PENDING transfers whose task was probably lost (broker down at accept
    time, retries exhausted). Posting is idempotent, so a transfer whose task is merely
    slow is at worst posted by whichever task comes first."""
    process = _current()
    transfer_ids = ledger.stale_pending_transfer_ids(
        process.uow_factory,
        age_min_seconds=process.settings.sweeper_pending_age_min_seconds,
        limit=process.settings.sweeper_batch_size_max,
    )
    for transfer_id in transfer_ids:
        post_transfer.apply_async(args=[transfer_id], queue=TRANSFERS_QUEUE)
    if transfer_ids:
        log.warning("sweeper re-enqueued pending transfers", count=len(transfer_ids))
    return len(transfer_ids)


@shared_task(name="ledger.prune_idempotency_keys", acks_late=True)
def prune_idempotency_keys() -> int:
    return ledger.prune_idempotency_keys(_current().uow_factory)


@shared_task(
    name=DELIVER_WEBHOOK_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    # A database hiccup before the claim: try again soon. Failed HTTP attempts are not
    # retried here; their next attempt time is stored and the scheduler enqueues it.
    autoretry_for=(DBAPIError,),
    retry_backoff=True,
    max_retries=5,
)
def deliver_webhook(delivery_id: str) -> str | None:
    process = _current()
    settings = process.settings
    if process.sender is None:
        process.sender = HttpxSender(settings, AddressGuard(development=settings.development))
    structlog.contextvars.bind_contextvars(delivery_id=delivery_id)
    status = webhooks.attempt_delivery(
        process.uow_factory,
        process.sender,
        delivery_id,
        schedule=settings.webhook_retry_schedule_seconds,
        lease_seconds=settings.webhook_timeout_seconds + settings.webhook_lease_margin_seconds,
        metrics=METRICS,
    )
    if status is not None:
        log.info("webhook attempt", status=status.value)
    return None if status is None else status.value


@shared_task(name="ledger.enqueue_due_webhooks", acks_late=True)
def enqueue_due_webhooks() -> int:
    process = _current()
    ids = webhooks.enqueue_due_deliveries(
        process.uow_factory,
        _enqueue_deliveries,
        requeue_after_seconds=process.settings.webhook_requeue_after_seconds,
        limit=process.settings.webhook_scheduler_batch_size_max,
    )
    return len(ids)


@shared_task(name="ledger.reconcile", acks_late=True)
def reconcile_books() -> int:
    """Check the books; publish the result for /metrics; log loudly on any violation."""
    process = _current()
    violations = reconcile.reconcile(
        process.uow_factory,
        pending_age_max_seconds=process.settings.reconcile_pending_age_max_seconds,
        delivery_overdue_max_seconds=process.settings.reconcile_delivery_overdue_max_seconds,
    )
    counts = {rule: len(rows) for rule, rows in violations.items()}
    client = redis.Redis.from_url(process.settings.redis_url, socket_timeout=5)
    try:
        publish_reconciliation(client, counts)
    finally:
        client.close()
    broken = {rule: count for rule, count in counts.items() if count}
    if broken:
        log.error("reconciliation found violations", violations=broken)
    else:
        log.info("reconciliation passed")
    return sum(broken.values())
