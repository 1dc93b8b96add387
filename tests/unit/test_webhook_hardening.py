"""Webhook hardening holds in the domain and the use cases, without servers: every IPv6 form
of a non-public IPv4 address and the never-public IPv6 ranges are refused; an attempt whose
lease passed to another worker cannot overwrite the newer outcome; an endpoint at its
concurrency cap defers its deliveries without counting attempts; an attempt is recorded
however the sender fails; locks are taken endpoint first; and re-enabling an endpoint, or a
replay, creates exactly the deliveries of the matching events it is missing."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from typing import Any

import pytest
from fakes import FakeStore, RecordingMetrics
from hypothesis import given
from hypothesis import strategies as st
from scenario import deposit, new_account

from ledger_core.domain.webhooks import (
    IPV6_NEVER_PUBLIC,
    DeliveryStatus,
    address_allowed,
)
from ledger_core.service_layer import posting, webhooks
from ledger_core.service_layer.ports import AttemptResult
from ledger_core.service_layer.posting import PostingOptions

SCHEDULE = (5.0, 30.0, 120.0)
LEASE_SECONDS = 40
BUSY_RETRY_AFTER_SECONDS = 5.0
REPLAY_EVENTS_MAX = 100


def both_modes(address: str) -> tuple[bool, bool]:
    return (
        address_allowed(address, allow_loopback=False),
        address_allowed(address, allow_loopback=True),
    )


# The four IPv6 forms of the issue, each carrying a private, a metadata and a loopback
# IPv4 address, and the two prefixes that are never public whatever they carry.
@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("::10.0.0.1", (False, False)),  # IPv4-compatible
        ("::169.254.169.254", (False, False)),
        ("::127.0.0.1", (False, True)),
        ("::ffff:0:10.0.0.1", (False, False)),  # SIIT, IPv4-translated
        ("::ffff:0:169.254.169.254", (False, False)),
        ("::ffff:0:127.0.0.1", (False, True)),
        ("64:ff9b:1::a00:1", (False, False)),  # local-use NAT64
        ("64:ff9b:1::808:808", (False, False)),
        ("64:ff9b:1:ffff::1", (False, False)),
        ("fec0::1", (False, False)),  # site-local
        ("feff:ffff::1", (False, False)),
        ("3fff::1", (False, False)),  # documentation, inside 2000::/3
        ("5f00::1", (False, False)),  # outside global unicast
        ("::2", (False, False)),
        # Public IPv4 in those forms, and plain public IPv6, stay reachable.
        ("::8.8.8.8", (True, True)),
        ("::ffff:0:8.8.8.8", (True, True)),
        ("64:ff9b::808:808", (True, True)),
        ("2606:4700::1111", (True, True)),
        ("::1", (False, True)),
        ("::", (False, False)),
    ],
)
def test_ipv6_forms_of_non_public_addresses_are_refused(
    address: str, expected: tuple[bool, bool]
) -> None:
    assert both_modes(address) == expected


ipv4 = st.integers(min_value=0, max_value=2**32 - 1).map(ipaddress.IPv4Address)


@given(v4=ipv4)
def test_an_ipv4_address_is_judged_the_same_in_every_ipv6_form(v4: ipaddress.IPv4Address) -> None:
    forms = [
        ipaddress.IPv6Address(int(ipaddress.IPv6Address("::ffff:0:0")) | int(v4)),  # mapped
        ipaddress.IPv6Address(int(ipaddress.IPv6Address("::ffff:0:0:0")) | int(v4)),  # SIIT
        ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(v4)),  # NAT64
        ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80)),  # 6to4
    ]
    if int(v4) > 1:  # :: and ::1 are not IPv4-compatible forms
        forms.append(ipaddress.IPv6Address(int(v4)))
    for form in forms:
        assert both_modes(str(form)) == both_modes(str(v4)), form


@given(
    network=st.sampled_from(IPV6_NEVER_PUBLIC),
    offset=st.integers(min_value=0, max_value=2**80 - 1),
)
def test_no_address_of_a_never_public_range_is_allowed(
    network: ipaddress.IPv6Network, offset: int
) -> None:
    address = network[offset % network.num_addresses]
    assert both_modes(str(address)) == (False, False)


# The use cases, on the in-memory unit of work


class Sender:
    def __init__(self, *status_codes: int | None, during: Any = None) -> None:
        self.status_codes = list(status_codes)
        self.sent: list[dict[str, Any]] = []
        self.during = during

    def send(self, url: str, **kwargs: Any) -> AttemptResult:
        self.sent.append({"url": url, **kwargs})
        if self.during is not None:
            self.during()
        code = self.status_codes.pop(0)
        return AttemptResult(code, None if code == 200 else "failed", 3)


class AllowEveryUrl:
    def check(self, url: str) -> str | None:
        return None


def attempt(
    store: FakeStore,
    sender: Any,
    delivery_id: str,
    *,
    concurrency_max: int = 2,
    metrics: RecordingMetrics | None = None,
) -> DeliveryStatus | None:
    return webhooks.attempt_delivery(
        store,
        sender,
        delivery_id,
        schedule=SCHEDULE,
        lease_seconds=LEASE_SECONDS,
        endpoint_concurrency_max=concurrency_max,
        busy_retry_after_seconds=BUSY_RETRY_AFTER_SECONDS,
        clock=store.now,
        jitter=lambda: 0.0,
        metrics=metrics or RecordingMetrics(),
    )


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


def post(store: FakeStore, *account_ids: str) -> list[str]:
    enqueued: list[str] = []
    transfer_ids = [deposit(store, account_id) for account_id in account_ids]
    posting.post_transfers(
        store, transfer_ids, options=PostingOptions(enqueue_deliveries=enqueued.extend)
    )
    return enqueued


def deliveries_of(store: FakeStore, endpoint_id: str) -> list[Any]:
    return [d for d in store.state.deliveries.values() if d.endpoint_id == endpoint_id]


def patch(store: FakeStore, endpoint_id: str, changes: dict[str, Any]) -> Any:
    return webhooks.update_endpoint(
        store,
        AllowEveryUrl(),
        endpoint_id,
        changes,
        replay_events_max=REPLAY_EVENTS_MAX,
        clock=store.now,
    )


def test_a_worker_whose_lease_was_taken_over_cannot_overwrite_the_newer_outcome(store):
    endpoint(store)
    [delivery_id] = post(store, new_account(store))
    metrics = RecordingMetrics()

    def taken_over() -> None:
        # Mid-send, the first lease runs out and another worker attempts it: success.
        store.advance(LEASE_SECONDS + 1)
        assert attempt(store, Sender(200), delivery_id) is DeliveryStatus.SUCCEEDED

    stale = attempt(store, Sender(500, during=taken_over), delivery_id, metrics=metrics)
    assert stale is None
    assert metrics.webhook_attempts == ["lease_lost"]
    row = store.state.deliveries[delivery_id]
    assert (row.status, row.attempts, row.last_status_code) == ("succeeded", 2, 200)
    assert row.lease_token is None and row.leased_until is None
    # The newer attempt's success stands alone in the log and on the endpoint.
    assert [a.status_code for a in store.state.attempts] == [200]
    assert store.state.endpoints[row.endpoint_id].failing_since is None
    assert attempt(store, Sender(200), delivery_id) is None, "nothing left to send"


def test_an_endpoint_at_its_cap_defers_deliveries_without_counting_attempts(store):
    slow, other = endpoint(store), endpoint(store)
    post(store, new_account(store), new_account(store))
    first, second = sorted(d.id for d in deliveries_of(store, slow["id"]))
    elsewhere, _ = sorted(d.id for d in deliveries_of(store, other["id"]))
    metrics = RecordingMetrics()
    statuses: list[Any] = []

    def meanwhile() -> None:
        # While `first` is in flight, its endpoint has no free slot; the other one has.
        for delivery_id in (second, elsewhere):
            statuses.append(
                attempt(store, Sender(200), delivery_id, concurrency_max=1, metrics=metrics)
            )

    sender = Sender(200, during=meanwhile)
    status = attempt(store, sender, first, concurrency_max=1, metrics=metrics)
    assert status is DeliveryStatus.SUCCEEDED
    assert statuses == [None, DeliveryStatus.SUCCEEDED]
    assert metrics.webhook_attempts == ["endpoint_busy", "succeeded", "succeeded"]
    deferred = store.state.deliveries[second]
    assert (deferred.status, deferred.attempts) == ("pending", 0)
    assert deferred.next_attempt_at == store.now() + timedelta(seconds=BUSY_RETRY_AFTER_SECONDS)
    assert deferred.enqueued_until is None, "the scheduler enqueues it again when due"
    assert attempt(store, Sender(200), second, concurrency_max=1) is None, "not due yet"
    store.advance(BUSY_RETRY_AFTER_SECONDS)
    assert attempt(store, Sender(200), second, concurrency_max=1) is DeliveryStatus.SUCCEEDED


def test_a_sender_that_raises_still_ends_in_a_recorded_failure(store):
    endpoint(store)
    [delivery_id] = post(store, new_account(store))

    class Broken:
        def send(self, url: str, **kwargs: Any) -> AttemptResult:
            raise RuntimeError("a bug in the sender")

    assert attempt(store, Broken(), delivery_id) is DeliveryStatus.FAILED
    row = store.state.deliveries[delivery_id]
    assert (row.last_status_code, row.last_error) == (None, "internal_error: RuntimeError")
    assert row.lease_token is None


def test_recording_locks_the_endpoint_before_any_delivery(store):
    endpoint(store)
    [delivery_id, _] = post(store, new_account(store), new_account(store))
    store.calls.clear()
    assert attempt(store, Sender(410), delivery_id) is DeliveryStatus.ABANDONED
    claim_and_record = [c for c in store.calls if c.startswith(("endpoints.", "deliveries."))]
    assert claim_and_record == [
        "deliveries.claim",  # reads the delivery, then locks its endpoint, then the delivery
        "endpoints.lock",
        "deliveries.record_attempt",
        "endpoints.record_failure",
        "endpoints.disable",
        "deliveries.abandon_for_endpoint",
    ]


def test_reenabling_creates_the_deliveries_of_the_matching_events_it_missed(store):
    watched, other = new_account(store), new_account(store)
    hook = endpoint(store, account_ids=[watched], events=["transfer.posted"])
    every = endpoint(store)
    post(store, watched)
    [before] = deliveries_of(store, hook["id"])
    disabled = patch(store, hook["id"], {"status": "disabled"})
    assert disabled["status"] == "disabled"
    assert disabled["disabled_at"] is not None
    post(store, watched, other, watched)  # two for it, one for another account
    assert deliveries_of(store, hook["id"]) == [before]

    enabled = patch(store, hook["id"], {"status": "enabled"})
    assert (enabled["status"], enabled["replayed"]) == ("enabled", 2)
    assert enabled["disabled_at"] == disabled["disabled_at"], "kept for a later replay"
    mine = deliveries_of(store, hook["id"])
    assert len(mine) == 3
    for delivery in mine:
        event = store.state.events[delivery.event_id]
        assert store.transfer(event.transfer_id).destination_account_id == watched
        if delivery.id != before.id:
            assert (delivery.status, delivery.attempts) == ("pending", 0)
            assert delivery.next_attempt_at == store.now()
            assert delivery.enqueued_until is None
            assert attempt(store, Sender(200), delivery.id) is DeliveryStatus.SUCCEEDED
    # Enabling what is enabled replays nothing; the all-accounts endpoint lost nothing.
    assert "replayed" not in patch(store, hook["id"], {"status": "enabled"})
    assert len(deliveries_of(store, hook["id"])) == 3
    assert len(deliveries_of(store, every["id"])) == 4


def test_replay_since_a_time_is_bounded_and_goes_on_where_it_stopped(store):
    account = new_account(store)
    hook = endpoint(store, account_ids=[account])
    with store() as uow:  # disabled and enabled again underneath, without a replay
        uow.endpoints.disable(hook["id"], reason="manual")
        uow.commit()
    since = store.now()
    post(store, account, account, account)
    with store() as uow:
        uow.endpoints.enable(hook["id"])
        uow.commit()
    assert deliveries_of(store, hook["id"]) == []

    def replay(events_max: int, when: Any = since) -> Any:
        return webhooks.replay_endpoint(
            store, hook["id"], since=when, events_max=events_max, clock=store.now
        )

    first = replay(2)
    assert first == {
        "object": "webhook_replay",
        "endpoint_id": hook["id"],
        "since": since.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "created": 2,
        "more": True,
    }
    second = replay(2)
    assert (second["created"], second["more"]) == (1, False)
    assert replay(2)["created"] == 0
    assert replay(10, store.now() + timedelta(seconds=1))["created"] == 0
    assert len(deliveries_of(store, hook["id"])) == 3

    patch(store, hook["id"], {"status": "disabled"})
    assert replay(2).code == "webhook_endpoint_disabled"
    missing = webhooks.replay_endpoint(store, "we_nope", since=since, events_max=2)
    assert missing.code == "webhook_endpoint_not_found"
