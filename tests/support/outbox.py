"""What the webhook tests on real PostgreSQL share: an injected clock set ten years ahead
(so the real scheduler of a concurrently running test worker never finds their deliveries
due), a URL guard that allows all, one attempt with the test's limits, and posting that
collects the deliveries it enqueues."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger_core.domain.webhooks import DeliveryStatus
from ledger_core.service_layer import posting, webhooks

FUTURE = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3650)
SCHEDULE = (5.0, 60.0, 3600.0)
LEASE_SECONDS = 30
REQUEUE_AFTER_SECONDS = 60
ENDPOINT_CONCURRENCY_MAX = 2
BUSY_RETRY_AFTER_SECONDS = 5.0


class AllowAll:
    def check(self, url: str) -> str | None:
        return None


@dataclass
class Clock:
    now: datetime = FUTURE

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def advance_to(self, moment: datetime) -> None:
        self.now = moment


def attempt(
    uow_factory: Any,
    sender: Any,
    delivery_id: str,
    clock: Clock,
    *,
    schedule: tuple[float, ...] = SCHEDULE,
    concurrency_max: int = ENDPOINT_CONCURRENCY_MAX,
    jitter: Callable[[], float] = lambda: 0.0,
) -> DeliveryStatus | None:
    return webhooks.attempt_delivery(
        uow_factory,
        sender,
        delivery_id,
        schedule=schedule,
        lease_seconds=LEASE_SECONDS,
        endpoint_concurrency_max=concurrency_max,
        busy_retry_after_seconds=BUSY_RETRY_AFTER_SECONDS,
        clock=clock,
        jitter=jitter,
    )


def post_enqueued(uow_factory: Any, transfer_ids: Sequence[str], clock: Clock) -> list[str]:
    """Post the transfers at the clock's time; the deliveries the posting enqueued."""
    enqueued: list[str] = []
    posting.post_transfers(
        uow_factory,
        list(transfer_ids),
        clock=clock,
        options=posting.PostingOptions(
            enqueue_deliveries=enqueued.extend, webhook_requeue_after_seconds=REQUEUE_AFTER_SECONDS
        ),
    )
    return enqueued
