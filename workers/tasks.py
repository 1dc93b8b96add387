"""Posting and housekeeping tasks. Each is idempotent: running it twice changes nothing more."""

from __future__ import annotations

import logging
import os
from functools import partial

from celery import shared_task
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from ledger_core.adapters.database import make_engine
from ledger_core.adapters.sql import SqlUnitOfWork
from ledger_core.config import Settings
from ledger_core.service_layer import ledger
from ledger_core.service_layer.ports import UnitOfWorkFactory
from workers.celery_app import POST_TRANSFER_TASK, TRANSFERS_QUEUE

log = logging.getLogger(__name__)

posting_retries_max = 10
posting_retry_backoff_max_seconds = 60

_engine: tuple[int, Engine] | None = None


def _uow_factory() -> UnitOfWorkFactory:
    """One engine per process: a pool inherited across fork would share sockets."""
    global _engine  # noqa: PLW0603 (a per-process cache is the point)
    if _engine is None or _engine[0] != os.getpid():
        _engine = (os.getpid(), make_engine(Settings()))
    return partial(SqlUnitOfWork, _engine[1])


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
    outcomes = ledger.post_transfers(_uow_factory(), [transfer_id])
    for outcome in outcomes:
        log.info("transfer finalized: %s %s", outcome.transfer_id, type(outcome).__name__)


@shared_task(name="ledger.sweep_pending_transfers", acks_late=True)
def sweep_pending_transfers() -> int:
    """Re-enqueue PENDING transfers whose task was probably lost (broker down at accept
    time, retries exhausted). Posting is idempotent, so a transfer whose task is merely
    slow is at worst posted by whichever task comes first."""
    settings = Settings()
    transfer_ids = ledger.stale_pending_transfer_ids(
        _uow_factory(),
        age_min_seconds=settings.sweeper_pending_age_min_seconds,
        limit=settings.sweeper_batch_size_max,
    )
    for transfer_id in transfer_ids:
        post_transfer.apply_async(args=[transfer_id], queue=TRANSFERS_QUEUE)
    if transfer_ids:
        log.warning("sweeper re-enqueued %d pending transfers", len(transfer_ids))
    return len(transfer_ids)


@shared_task(name="ledger.prune_idempotency_keys", acks_late=True)
def prune_idempotency_keys() -> int:
    return ledger.prune_idempotency_keys(_uow_factory())
