"""The webhook use cases against the in-memory unit of work: a posting's outbox becomes
deliveries that are attempted once per claim, retried on schedule, enqueued again only when
due, abandoned when their endpoint is deleted or gone, and read back with every attempt."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fakes import FakeStore
from scenario import deposit, new_account

from ledger_core.domain.webhooks import DEFAULT_RETRY_SCHEDULE_SECONDS, DeliveryStatus
from ledger_core.service_layer import posting, webhooks
from ledger_core.service_layer.ports import AttemptResult
from ledger_core.service_layer.posting import PostingOptions

SCHEDULE = tuple(float(s) for s in DEFAULT_RETRY_SCHEDULE_SECONDS)
ENDPOINT_CONCURRENCY_MAX = 2
BUSY_RETRY_AFTER_SECONDS = 5.0


class AllowEveryUrl:
    def check(self, url: str) -> str | None:
        return None


class Sender:
    def __init__(self, *status_codes: int | None) -> None:
        self.status_codes = list(status_codes)
        self.sent: list[dict[str, Any]] = []

    def send(self, url: str, **kwargs: Any) -> AttemptResult:
        self.sent.append({"url": url, **kwargs})
        code = self.status_codes.pop(0)
        return AttemptResult(code, None if code == 200 else "failed", 3)


def endpoint(store: FakeStore, **kwargs: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "url": "https://hooks.example.com/x",
        "events": None,
        "account_ids": None,
        "description": None,
    } | kwargs
    created = webhooks.create_endpoint(store, AllowEveryUrl(), **arguments)
    assert isinstance(created, dict), created
    return created


def posted_delivery(store: FakeStore) -> str:
    enqueued: list[str] = []
    account_id = new_account(store)
    posting.post_transfers(
        store,
        [deposit(store, account_id)],
        options=PostingOptions(enqueue_deliveries=enqueued.extend),
    )
    [delivery_id] = enqueued
    return delivery_id


def attempt(store: FakeStore, sender: Sender, delivery_id: str) -> DeliveryStatus | None:
    return webhooks.attempt_delivery(
        store,
        sender,
        delivery_id,
        schedule=SCHEDULE,
        lease_seconds=40,
        endpoint_concurrency_max=ENDPOINT_CONCURRENCY_MAX,
        busy_retry_after_seconds=BUSY_RETRY_AFTER_SECONDS,
        clock=store.now,
        jitter=lambda: 0.0,
    )


def test_a_successful_attempt_is_recorded_with_its_signed_event(store):
    hook = endpoint(store)
    delivery_id = posted_delivery(store)
    sender = Sender(200)
    assert attempt(store, sender, delivery_id) is DeliveryStatus.SUCCEEDED
    [sent] = sender.sent
    assert sent["secrets"] == [hook["secret"]]
    delivery = webhooks.get_delivery(store, delivery_id)
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
        "succeeded",
        1,
        200,
    )
    assert [a["status_code"] for a in delivery["attempt_log"]] == [200]
    event = webhooks.get_event(store, delivery["event_id"])
    assert event["type"] == "transfer.posted"
    assert sent["payload"] == store.state.events[delivery["event_id"]].payload
    assert attempt(store, Sender(200), delivery_id) is None, "a succeeded delivery is done"


def enqueue_due(store: FakeStore) -> list[str]:
    return webhooks.enqueue_due_deliveries(
        store, lambda ids: None, requeue_after_seconds=120, limit=10, clock=store.now
    )


def test_a_failed_attempt_is_retried_on_schedule(store):
    endpoint(store)
    delivery_id = posted_delivery(store)
    assert attempt(store, Sender(500), delivery_id) is DeliveryStatus.FAILED
    row = store.state.deliveries[delivery_id]
    assert (row.status, row.attempts, row.leased_until) == ("failed", 1, None)
    assert row.next_attempt_at == store.now() + timedelta(seconds=SCHEDULE[0])
    assert store.state.endpoints[row.endpoint_id].failing_since == store.now()
    assert attempt(store, Sender(200), delivery_id) is None, "attempted before it was due"
    store.advance(SCHEDULE[0])
    assert attempt(store, Sender(200), delivery_id) is DeliveryStatus.SUCCEEDED
    assert store.state.endpoints[row.endpoint_id].failing_since is None


def test_a_delivery_whose_task_was_lost_is_enqueued_again_once_per_window(store):
    endpoint(store)
    delivery_id = posted_delivery(store)  # its task was enqueued by the posting
    assert enqueue_due(store) == []
    store.advance(121)
    assert enqueue_due(store) == [delivery_id]
    assert enqueue_due(store) == [], "enqueued twice while its task is on the queue"


def test_a_retry_is_enqueued_as_soon_as_it_is_due(store):
    endpoint(store)
    delivery_id = posted_delivery(store)
    attempt(store, Sender(500), delivery_id)  # the enqueued task ran, and failed
    store.advance(SCHEDULE[0])
    assert enqueue_due(store) == [delivery_id]


def test_410_disables_the_endpoint_and_abandons_its_other_deliveries(store):
    hook = endpoint(store)
    first, second = posted_delivery(store), posted_delivery(store)
    assert attempt(store, Sender(410), first) is DeliveryStatus.ABANDONED
    assert webhooks.get_endpoint(store, hook["id"])["status"] == "disabled"
    assert webhooks.get_delivery(store, second)["status"] == "abandoned"


def test_a_deleted_endpoint_is_gone_and_its_pending_deliveries_abandoned(store):
    hook = endpoint(store)
    delivery_id = posted_delivery(store)
    assert webhooks.delete_endpoint(store, hook["id"], clock=store.now)["deleted"] is True
    assert webhooks.get_endpoint(store, hook["id"]).code == "webhook_endpoint_not_found"
    assert webhooks.get_delivery(store, delivery_id)["status"] == "abandoned"
    assert attempt(store, Sender(200), delivery_id) is None


def test_a_manual_retry_waits_for_a_running_attempt(store):
    endpoint(store)
    delivery_id = posted_delivery(store)
    with store() as uow:
        uow.deliveries.claim(
            delivery_id,
            now=store.now(),
            lease_until=store.now() + timedelta(seconds=40),
            lease_token="other-worker",
            endpoint_concurrency_max=ENDPOINT_CONCURRENCY_MAX,
            busy_retry_at=store.now(),
        )
        uow.commit()
    enqueued: list[list[str]] = []
    busy = webhooks.retry_delivery(
        store, enqueued.append, delivery_id, requeue_after_seconds=120, clock=store.now
    )
    assert busy.code == "delivery_in_progress"
    store.advance(41)
    retried = webhooks.retry_delivery(
        store, enqueued.append, delivery_id, requeue_after_seconds=120, clock=store.now
    )
    assert retried["status"] == "pending"
    assert enqueued == [[delivery_id]]


def test_an_endpoint_for_some_accounts_gets_only_their_events(store):
    watched, other = new_account(store), new_account(store)
    endpoint(store, account_ids=[watched])
    enqueued: list[str] = []
    options = PostingOptions(enqueue_deliveries=enqueued.extend)
    posting.post_transfers(store, [deposit(store, other), deposit(store, watched)], options=options)
    [delivery_id] = enqueued
    event = store.state.events[store.state.deliveries[delivery_id].event_id]
    assert store.transfer(event.transfer_id).destination_account_id == watched


def test_an_endpoint_naming_an_unknown_account_is_refused(store):
    result = webhooks.create_endpoint(
        store, AllowEveryUrl(), url="https://x.example/", events=None,
        account_ids=["acc_nope"], description=None,
    )  # fmt: skip
    assert result.code == "account_not_found"
    assert store.state.endpoints == {}


def test_rotating_a_secret_signs_with_both_for_a_day(store):
    hook = endpoint(store)
    rotated = webhooks.rotate_secret(store, hook["id"], clock=store.now)
    delivery_id = posted_delivery(store)
    sender = Sender(200)
    attempt(store, sender, delivery_id)
    assert sender.sent[0]["secrets"] == [rotated["secret"], hook["secret"]]


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_deliveries_and_endpoints_page_through_once(store, limit):
    hook = endpoint(store)
    ids = sorted(posted_delivery(store) for _ in range(3))
    endpoint(store)
    seen, cursor = [], None
    while True:
        page = webhooks.list_deliveries(store, hook["id"], cursor=cursor, limit=limit)
        seen += [d["id"] for d in page.data]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ids
    all_endpoints = webhooks.list_endpoints(store, cursor=None, limit=10)
    assert len(all_endpoints.data) == 2
