"""Posting, delivery and housekeeping tasks. Each is idempotent: running it twice changes
nothing more than running it once. Each loads what it needs by id and calls one use case."""

from __future__ import annotations

import os
from dataclasses import dataclass

import redis
import structlog
from celery import shared_task

from ledger_core.adapters.database import make_engine
from ledger_core.adapters.metrics import PrometheusMetrics, publish_reconciliation
from ledger_core.adapters.redis_cache import make_redis
from ledger_core.adapters.shard_lock import exclusive_shard
from ledger_core.adapters.sql import SqlUnitOfWorkFactory
from ledger_core.adapters.wakeups import PostingWakeups
from ledger_core.adapters.webhook_http import AddressGuard, HttpxSender
from ledger_core.config import Settings, posting_queue
from ledger_core.service_layer import accounts, movements, posting, reconcile, webhooks
from ledger_core.service_layer.errors import StorageUnavailableError
from workers.celery_app import (
    DELIVER_WEBHOOK_TASK,
    POST_PENDING_TASK,
    REQUEST_ID_HEADER,
    WEBHOOKS_QUEUE,
)

log = structlog.get_logger(__name__)
METRICS = PrometheusMetrics()

# A posting task that meets an unavailable database or a systematic failure backs off
# (jittered, capped) and tries again; the countdowns stay far below the broker's
# visibility timeout, and the sweeper wakes posting anyway once they run out.
posting_retries_max = 10
posting_retry_backoff_max_seconds = 60
webhook_retries_max = 5


@dataclass
class _Process:
    """What one worker process builds once: a pool inherited across fork would share
    sockets, so everything is made lazily in the process that uses it."""

    pid: int
    settings: Settings
    uow_factory: SqlUnitOfWorkFactory
    redis: redis.Redis
    wakeups: PostingWakeups
    sender: HttpxSender | None = None


_process: _Process | None = None


def _current() -> _Process:
    global _process  # noqa: PLW0603 (a per-process cache is the point)
    if _process is None or _process.pid != os.getpid():
        settings = Settings()
        client = make_redis(
            settings.redis_url, socket_timeout_seconds=settings.redis_socket_timeout_seconds
        )
        _process = _Process(
            os.getpid(),
            settings,
            SqlUnitOfWorkFactory(make_engine(settings)),
            client,
            PostingWakeups(client, _publish_wake),
        )
    return _process


def _publish_wake(shard: int) -> None:
    shards = _current().settings.posting_shards
    post_pending.apply_async(args=[shard], queue=posting_queue(shard, shards))


def _enqueue_deliveries(delivery_ids: list[str]) -> None:
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    for delivery_id in delivery_ids:
        deliver_webhook.apply_async(
            args=[delivery_id], queue=WEBHOOKS_QUEUE, headers={REQUEST_ID_HEADER: request_id}
        )


@shared_task(
    name=POST_PENDING_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(StorageUnavailableError, posting.PostingBrokenError),
    retry_backoff=True,
    retry_backoff_max=posting_retry_backoff_max_seconds,
    retry_jitter=True,
    max_retries=posting_retries_max,
)
def post_pending(shard: int = 0) -> int:
    """A wake-up: post what is PENDING on this shard, batch after batch, within bounds."""
    process = _current()
    with exclusive_shard(process.uow_factory.engine, shard) as held:
        if not held:
            # The holder is stuck, or slow beyond the bound: leave a wake-up behind, so
            # that whatever woke this task is not forgotten.
            process.wakeups.force(shard)
            return 0
        # This wake-up is no longer waiting: clear its flag before the first claim, so
        # that a transfer committed from now on publishes a new one unless that claim
        # sees it.
        process.wakeups.clear(shard)
        report = _drain(process, shard)
    if report.more_work:
        # Bounded on purpose: hand over to a fresh task rather than run into time limits.
        process.wakeups.force(shard)
    return report.transfers


def _drain(process: _Process, shard: int) -> posting.DrainReport:
    settings = process.settings
    return posting.drain(
        process.uow_factory,
        shard=shard,
        batch_size_max=settings.posting_batch_size_max,
        options=posting.PostingOptions(
            enqueue_deliveries=_enqueue_deliveries,
            webhook_requeue_after_seconds=settings.webhook_requeue_after_seconds,
            metrics=METRICS,
            attempts_max=settings.posting_attempts_max,
            retry_delays_seconds=settings.posting_retry_delays_seconds,
        ),
    )


@shared_task(name="ledger.sweep_pending_transfers", acks_late=True)
def sweep_pending_transfers() -> int:
    """Wake the shards whose PENDING transfers waited too long (a wake-up lost to a broker
    outage, a worker killed mid-batch, a retry come due)."""
    process = _current()
    stale = posting.wake_stale(
        process.uow_factory,
        process.wakeups.force,
        age_min_seconds=process.settings.sweeper_pending_age_min_seconds,
    )
    if stale:
        log.warning("sweeper woke posting", stale_by_shard=stale)
    return sum(stale.values())


@shared_task(name="ledger.release_due_holds", acks_late=True)
def release_due_holds() -> int:
    """Expire the holds past their expiry and capture the cashbacks whose delay passed."""
    process = _current()
    count = movements.release_due_holds(
        process.uow_factory, process.wakeups.force, shards=process.settings.posting_shards
    )
    if count:
        log.info("holds due: expiries and cashbacks accepted", count=count)
    return count


@shared_task(name="ledger.prune_idempotency_keys", acks_late=True)
def prune_idempotency_keys() -> int:
    return accounts.prune_idempotency_keys(_current().uow_factory)


@shared_task(
    name=DELIVER_WEBHOOK_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    # A database hiccup before the claim: try again soon. Failed HTTP attempts are not
    # retried here; their next attempt time is stored and the scheduler enqueues it.
    autoretry_for=(StorageUnavailableError,),
    retry_backoff=True,
    max_retries=webhook_retries_max,
)
def deliver_webhook(delivery_id: str) -> str | None:
    process = _current()
    settings = process.settings
    if process.sender is None:
        guard = AddressGuard(
            development=settings.development,
            dns_timeout_seconds=settings.webhook_dns_timeout_seconds,
        )
        process.sender = HttpxSender(settings, guard)
    structlog.contextvars.bind_contextvars(delivery_id=delivery_id)
    status = webhooks.attempt_delivery(
        process.uow_factory,
        process.sender,
        delivery_id,
        schedule=settings.webhook_retry_schedule_seconds,
        # The sender's deadline is webhook_timeout_seconds: the lease outlasts it by the
        # margin, time enough to record the outcome before another worker may claim it.
        lease_seconds=settings.webhook_timeout_seconds + settings.webhook_lease_margin_seconds,
        endpoint_concurrency_max=settings.webhook_endpoint_concurrency_max,
        busy_retry_after_seconds=settings.webhook_endpoint_busy_retry_after_seconds,
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
    publish_reconciliation(process.redis, counts)
    broken = {rule: count for rule, count in counts.items() if count}
    if broken:
        log.error("reconciliation found violations", violations=broken)
    else:
        log.info("reconciliation passed")
    return sum(broken.values())
