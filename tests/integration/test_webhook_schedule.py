"""Webhook outbox and schedule on real PostgreSQL, driven by an injected clock, not sleeps.

Times are set ten years ahead, so the real scheduler of a concurrently running test
worker never finds these deliveries due.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from ledger_core.adapters.webhook_http import AttemptResult, signature_headers
from ledger_core.domain.model import TransferKind
from ledger_core.domain.webhooks import DeliveryStatus, signing_secrets
from ledger_core.service_layer import posting, webhooks
from ledger_core.service_layer.ports import ClaimedDelivery
from tests.support.books import Books
from tests.support.outbox import (
    BUSY_RETRY_AFTER_SECONDS,
    ENDPOINT_CONCURRENCY_MAX,
    REQUEUE_AFTER_SECONDS,
    SCHEDULE,
    AllowAll,
    Clock,
    attempt,
    post_enqueued,
)


@dataclass
class ScriptedSender:
    """Stands in for the HTTP call only; the database and the use cases are real."""

    status_codes: list[int | None]
    calls: list[dict[str, Any]] = field(default_factory=list)

    def send(self, url: str, **kwargs: Any) -> AttemptResult:
        self.calls.append({"url": url, **kwargs})
        code = self.status_codes.pop(0)
        return AttemptResult(code, None if code and code < 300 else f"HTTP {code}", 1)


@pytest.fixture
def setting(uow_factory: Any) -> Iterator[dict[str, Any]]:
    books = Books(uow_factory, name="schedule")
    account_id = books.open_account()
    endpoint = webhooks.create_endpoint(
        uow_factory,
        AllowAll(),
        url="https://receiver.example/hook",
        events=None,
        account_ids=[account_id],
        description=None,
    )
    yield {"books": books, "account_id": account_id, "endpoint": endpoint}
    webhooks.update_endpoint(
        uow_factory, AllowAll(), endpoint["id"], {"status": "disabled"}, replay_events_max=10
    )


def accept_deposit(uow_factory: Any, setting: dict[str, Any], amount: int = 10) -> str:
    return setting["books"].accept(TransferKind.DEPOSIT, None, setting["account_id"], amount)


def posted_delivery(uow_factory: Any, setting: dict[str, Any], clock: Clock) -> str:
    enqueued = post_enqueued(uow_factory, [accept_deposit(uow_factory, setting)], clock)
    assert len(enqueued) == 1
    return enqueued[0]


def claim(uow: Any, delivery_id: str, now: datetime, lease_until: datetime, token: str) -> Any:
    return uow.deliveries.claim(
        delivery_id,
        now=now,
        lease_until=lease_until,
        lease_token=token,
        endpoint_concurrency_max=ENDPOINT_CONCURRENCY_MAX,
        busy_retry_at=now + timedelta(seconds=BUSY_RETRY_AFTER_SECONDS),
    )


def test_no_event_exists_for_a_rolled_back_posting(
    uow_factory: Any, engine: Engine, setting: dict[str, Any]
) -> None:
    transfer_id = accept_deposit(uow_factory, setting)

    def broken_clock() -> datetime:
        raise RuntimeError("crash between the entries and the commit")

    # Not the database refusing the transfer: nothing is blamed on it, the caller learns.
    with pytest.raises(RuntimeError):
        posting.post_transfers(uow_factory, [transfer_id], clock=broken_clock)
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT t.status, t.posting_attempts,"
                " (SELECT count(*) FROM entries WHERE transfer_id = t.id) AS n,"
                " (SELECT count(*) FROM events WHERE transfer_id = t.id) AS e"
                " FROM transfers t WHERE t.id = :id"
            ),
            {"id": transfer_id},
        ).one()
    assert (row.status, row.posting_attempts, row.n, row.e) == ("pending", 0, 0, 0)

    posting.post_transfers(uow_factory, [transfer_id], clock=Clock())
    posting.post_transfers(uow_factory, [transfer_id], clock=Clock())  # a duplicate task
    with engine.connect() as connection:
        events = connection.scalar(
            text("SELECT count(*) FROM events WHERE transfer_id = :id"), {"id": transfer_id}
        )
    assert events == 1


def test_retries_follow_the_schedule_then_abandon_then_retry_by_hand(
    uow_factory: Any, setting: dict[str, Any]
) -> None:
    clock = Clock()
    delivery_id = posted_delivery(uow_factory, setting, clock)
    sender = ScriptedSender([500] * (len(SCHEDULE) + 1) + [200])
    start = clock.now

    for number, delay in enumerate(SCHEDULE, start=1):
        assert attempt(uow_factory, sender, delivery_id, clock) is DeliveryStatus.FAILED
        delivery = webhooks.get_delivery(uow_factory, delivery_id)
        due = datetime.fromisoformat(delivery["next_attempt_at"].replace("Z", "+00:00"))
        assert due == clock.now + timedelta(seconds=delay)
        assert delivery["attempts"] == number
        # Not due yet: nothing happens a second early.
        clock.advance_to(due - timedelta(seconds=1))
        assert attempt(uow_factory, sender, delivery_id, clock) is None
        clock.advance_to(due)

    assert attempt(uow_factory, sender, delivery_id, clock) is DeliveryStatus.ABANDONED
    assert clock.now - start == timedelta(seconds=sum(SCHEDULE))
    assert len(sender.calls) == len(SCHEDULE) + 1
    assert len({call["message_id"] for call in sender.calls}) == 1
    clock.advance_to(clock.now + timedelta(days=30))
    assert attempt(uow_factory, sender, delivery_id, clock) is None

    retried = webhooks.retry_delivery(
        uow_factory, lambda ids: None, delivery_id, requeue_after_seconds=60, clock=clock
    )
    assert retried["status"] == "pending"
    assert attempt(uow_factory, sender, delivery_id, clock) is DeliveryStatus.SUCCEEDED
    log = webhooks.get_delivery(uow_factory, delivery_id)["attempt_log"]
    assert [a["status_code"] for a in log] == [500] * (len(SCHEDULE) + 1) + [200]


def test_endpoint_failing_for_five_days_is_disabled(
    uow_factory: Any, setting: dict[str, Any]
) -> None:
    clock = Clock()
    long_schedule = (86400.0,) * 10
    delivery_id = posted_delivery(uow_factory, setting, clock)
    sender = ScriptedSender([503] * 10)
    statuses = []
    for _ in range(6):
        statuses.append(attempt(uow_factory, sender, delivery_id, clock, schedule=long_schedule))
        clock.advance_to(clock.now + timedelta(days=1))
    assert statuses[:5] == [DeliveryStatus.FAILED] * 5
    assert statuses[5] is DeliveryStatus.ABANDONED
    endpoint = webhooks.get_endpoint(uow_factory, setting["endpoint"]["id"])
    assert (endpoint["status"], endpoint["disabled_reason"]) == ("disabled", "failing")


def test_a_claimed_delivery_is_leased_to_one_worker_until_its_lease_ends(
    uow_factory: Any, setting: dict[str, Any]
) -> None:
    clock = Clock()
    delivery_id = posted_delivery(uow_factory, setting, clock)
    with uow_factory() as uow:
        first = claim(uow, delivery_id, clock.now, clock.now + timedelta(seconds=30), "first")
        uow.commit()
    assert isinstance(first, ClaimedDelivery)
    # The first worker "died" mid-send: a second cannot claim until the lease is over.
    with uow_factory() as uow:
        assert claim(uow, delivery_id, clock.now + timedelta(seconds=29), clock.now, "x") is None
        second = claim(
            uow,
            delivery_id,
            clock.now + timedelta(seconds=31),
            clock.now + timedelta(seconds=61),
            "second",
        )
        uow.commit()
    assert isinstance(second, ClaimedDelivery)
    assert second.attempts == 2
    assert second.event_id == first.event_id


def test_scheduler_enqueues_due_deliveries_once_per_requeue_window(
    uow_factory: Any, setting: dict[str, Any]
) -> None:
    clock = Clock()
    delivery_id = posted_delivery(uow_factory, setting, clock)
    enqueued: list[str] = []

    def run() -> list[str]:
        return webhooks.enqueue_due_deliveries(
            uow_factory,
            enqueued.extend,
            requeue_after_seconds=REQUEUE_AFTER_SECONDS,
            limit=1000,
            clock=clock,
        )

    # The posting task enqueued it already: not again within the window...
    assert delivery_id not in run()
    clock.advance_to(clock.now + timedelta(seconds=REQUEUE_AFTER_SECONDS + 1))
    # ...but again once the window passed without an attempt (that enqueue was lost).
    assert delivery_id in run()
    assert delivery_id not in run()
    assert enqueued.count(delivery_id) == 1


def test_rotation_keeps_the_old_secret_valid_for_24_hours_only(
    uow_factory: Any, setting: dict[str, Any]
) -> None:
    endpoint_id = setting["endpoint"]["id"]
    old_secret = setting["endpoint"]["secret"]
    now = datetime.now(UTC)
    payload = '{"id":"evt_x"}'

    def headers_now() -> dict[str, str]:
        with uow_factory() as uow:
            record = uow.endpoints.get(endpoint_id)
        keys = signing_secrets(
            record.secret, record.previous_secret, record.previous_secret_expires_at, now
        )
        return signature_headers(message_id="evt_x", payload=payload, secrets=keys, timestamp=now)

    rotated = webhooks.rotate_secret(
        uow_factory, endpoint_id, clock=lambda: now - timedelta(hours=23, minutes=59)
    )
    headers = headers_now()
    Webhook(old_secret).verify(payload, headers)
    Webhook(rotated["secret"]).verify(payload, headers)

    newer = webhooks.rotate_secret(
        uow_factory, endpoint_id, clock=lambda: now - timedelta(hours=24, seconds=1)
    )
    headers = headers_now()
    Webhook(newer["secret"]).verify(payload, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(rotated["secret"]).verify(payload, headers)
