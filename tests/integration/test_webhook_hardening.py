"""Webhook hardening on real PostgreSQL, with an injected clock: a worker whose lease was
taken over cannot overwrite the newer outcome; an endpoint at its concurrency cap defers
deliveries without counting attempts; a 410 disabling an endpoint and a concurrent attempt
of the same endpoint do not deadlock; re-enabling replays exactly the matching events missed
while disabled, including one whose posting was in flight; a timed-out attempt is a recorded
failure abandoned on schedule; and a receiver down for an hour gets every event, signed.

Times are set ten years ahead, so the real scheduler of a concurrently running test worker
never finds these deliveries due.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import standardwebhooks.webhooks
from sqlalchemy import Engine, text
from standardwebhooks import Webhook

from ledger_core.adapters.webhook_http import AddressGuard, HttpxSender
from ledger_core.config import Settings
from ledger_core.domain.model import Leg, TransferKind
from ledger_core.domain.webhooks import (
    DEFAULT_RETRY_SCHEDULE_SECONDS,
    DeliveryStatus,
    endpoint_matches,
)
from ledger_core.service_layer import movements, posting, webhooks
from ledger_core.service_layer.errors import Response
from ledger_core.service_layer.ports import (
    AttemptResult,
    ClaimedDelivery,
    EndpointBusy,
    NullIdempotencyCache,
)
from tests.support.books import Books
from tests.support.outbox import (
    BUSY_RETRY_AFTER_SECONDS,
    LEASE_SECONDS,
    AllowAll,
    Clock,
    attempt,
    post_enqueued,
)
from tests.support.processes import free_port
from tests.support.receiver import start_receiver, start_trickler

lock_wait_timeout_seconds = 10
outage_seconds = 3600
outage_rounds_max = 100


class Sender:
    """Stands in for the HTTP call only; `during` runs while the request is in flight."""

    def __init__(self, *codes: int, during: Callable[[], None] | None = None) -> None:
        self.codes = list(codes)
        self.during = during

    def send(self, url: str, **kwargs: Any) -> AttemptResult:
        if self.during is not None:
            self.during()
        code = self.codes.pop(0)
        return AttemptResult(code, None if code < 300 else f"HTTP {code}", 1)


@pytest.fixture
def books(uow_factory: Any) -> Books:
    return Books(uow_factory, name="webhook-hardening")


@pytest.fixture
def endpoints(uow_factory: Any) -> Iterator[Callable[..., dict[str, Any]]]:
    """Creates endpoints and disables them after the test, so no later posting feeds them."""
    created: list[str] = []

    def create(url: str = "https://receiver.example/hook", **fields: Any) -> dict[str, Any]:
        arguments: dict[str, Any] = {"events": None, "account_ids": None, "description": None}
        endpoint = webhooks.create_endpoint(
            uow_factory, AllowAll(), url=url, **(arguments | fields)
        )
        assert isinstance(endpoint, dict), endpoint
        created.append(endpoint["id"])
        return endpoint

    yield create
    for endpoint_id in created:
        webhooks.delete_endpoint(uow_factory, endpoint_id)


def post(
    uow_factory: Any,
    books: Books,
    clock: Clock,
    *moves: tuple[TransferKind, str | None, str | None],
) -> list[str]:
    """Accept and post movements at the clock's time; returns the deliveries created."""
    ids = [books.accept(kind, source, destination, 1) for kind, source, destination in moves]
    return post_enqueued(uow_factory, ids, clock)


def delivery_row(engine: Engine, delivery_id: str) -> Any:
    with engine.connect() as connection:
        return connection.execute(
            text("SELECT * FROM webhook_deliveries WHERE id = :id"), {"id": delivery_id}
        ).one()


def wait_for_lock_waiter(engine: Engine) -> bool:
    """Bounded: whether some session of this database is waiting for a lock."""
    deadline = time.monotonic() + lock_wait_timeout_seconds
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            waiting = connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        if waiting:
            return True
        time.sleep(0.05)
    return False


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except Exception as error:  # reported by the test, not lost in the thread
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


class Watched:
    """A unit of work that reports the errors it ends with (before the adapter turns them
    into the service layer's) and can pause after one repository call."""

    def __init__(
        self, inner: Any, errors: list[str], pause_after: str | None, gate: dict[str, Any]
    ) -> None:
        self._inner, self._errors, self._pause_after, self._gate = inner, errors, pause_after, gate

    def __enter__(self) -> Watched:
        self._inner.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self._errors.append(str(exc))
        self._inner.__exit__(exc_type, exc, tb)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if self._pause_after is None or not self._pause_after.startswith(name + "."):
            return value
        method = self._pause_after.split(".", 1)[1]
        gate = self._gate

        class Pausing:
            def __getattr__(self, attribute: str) -> Any:
                inner = getattr(value, attribute)
                if attribute != method or gate["paused"].is_set():
                    return inner

                def call(*args: Any, **kwargs: Any) -> Any:
                    result = inner(*args, **kwargs)
                    gate["paused"].set()
                    assert gate["resume"].wait(lock_wait_timeout_seconds * 2)
                    return result

                return call

        return Pausing()


def watched_factory(
    uow_factory: Any, errors: list[str], pause_after: str | None = None
) -> tuple[Callable[[], Any], dict[str, Any]]:
    gate = {"paused": threading.Event(), "resume": threading.Event()}
    return (lambda: Watched(uow_factory(), errors, pause_after, gate)), gate


def test_a_worker_whose_lease_was_taken_over_cannot_overwrite_the_newer_outcome(
    uow_factory: Any, engine: Engine, books: Books, endpoints: Any
) -> None:
    account = books.open_account()
    endpoints(account_ids=[account])
    clock = Clock()
    [delivery_id] = post(uow_factory, books, clock, (TransferKind.DEPOSIT, None, account))

    def taken_over() -> None:
        # The first worker's lease runs out mid-send; another worker attempts: success.
        clock.advance(LEASE_SECONDS + 1)
        assert attempt(uow_factory, Sender(200), delivery_id, clock) is DeliveryStatus.SUCCEEDED

    # The first worker's receiver answered 500 after all: its outcome is dropped.
    assert attempt(uow_factory, Sender(500, during=taken_over), delivery_id, clock) is None
    row = delivery_row(engine, delivery_id)
    assert (row.status, row.attempts, row.last_status_code) == ("succeeded", 2, 200)
    assert (row.lease_token, row.leased_until, row.next_attempt_at) == (None, None, None)
    log = webhooks.get_delivery(uow_factory, delivery_id)["attempt_log"]
    assert [a["status_code"] for a in log] == [200]


def test_an_endpoint_at_its_cap_defers_deliveries_without_counting_attempts(
    uow_factory: Any, engine: Engine, books: Books, endpoints: Any
) -> None:
    account = books.open_account()
    endpoints(account_ids=[account])
    clock = Clock()
    first, second = post(
        uow_factory,
        books,
        clock,
        (TransferKind.DEPOSIT, None, account),
        (TransferKind.DEPOSIT, None, account),
    )

    def claim(delivery_id: str, token: str) -> Any:
        with uow_factory() as uow:
            claimed = uow.deliveries.claim(
                delivery_id,
                now=clock.now,
                lease_until=clock.now + timedelta(seconds=LEASE_SECONDS),
                lease_token=token,
                endpoint_concurrency_max=1,
                busy_retry_at=clock.now + timedelta(seconds=BUSY_RETRY_AFTER_SECONDS),
            )
            uow.commit()
        return claimed

    assert isinstance(claim(first, "one"), ClaimedDelivery)
    busy = claim(second, "two")
    assert isinstance(busy, EndpointBusy)
    assert busy.leases == 1
    row = delivery_row(engine, second)
    assert (row.status, row.attempts, row.leased_until, row.enqueued_until) == (
        "pending",
        0,
        None,
        None,
    )
    assert row.next_attempt_at == clock.now + timedelta(seconds=BUSY_RETRY_AFTER_SECONDS)
    # Once the first lease is over (a dead worker), the slot is free again.
    clock.advance(LEASE_SECONDS + 1)
    assert isinstance(claim(second, "two"), ClaimedDelivery)
    assert delivery_row(engine, second).attempts == 1


def test_a_410_disabling_the_endpoint_and_a_concurrent_attempt_do_not_deadlock(
    uow_factory: Any, engine: Engine, books: Books, endpoints: Any
) -> None:
    account = books.open_account()
    endpoint = endpoints(account_ids=[account])
    clock = Clock()
    gone, other = post(
        uow_factory,
        books,
        clock,
        (TransferKind.DEPOSIT, None, account),
        (TransferKind.DEPOSIT, None, account),
    )
    errors: list[str] = []
    # The other attempt records its 500 and stops there, its transaction open, while the
    # 410 of the first one is recorded: each then needs what the other holds, unless both
    # lock the endpoint first.
    paused_factory, gate = watched_factory(uow_factory, errors, "deliveries.record_attempt")
    plain_factory, _ = watched_factory(uow_factory, errors)
    slow, slow_outcome = in_thread(
        lambda: attempt(paused_factory, Sender(500), other, clock, concurrency_max=5)
    )
    assert gate["paused"].wait(lock_wait_timeout_seconds)
    disabling, disabling_outcome = in_thread(
        lambda: attempt(plain_factory, Sender(410), gone, clock, concurrency_max=5)
    )
    assert wait_for_lock_waiter(engine), "the 410's transaction waits for the other one"
    gate["resume"].set()
    for thread in (slow, disabling):
        thread.join(60)
    assert "error" not in slow_outcome and "error" not in disabling_outcome
    assert [e for e in errors if "deadlock" in e] == []
    assert disabling_outcome["result"] is DeliveryStatus.ABANDONED
    current = webhooks.get_endpoint(uow_factory, endpoint["id"])
    assert (current["status"], current["disabled_reason"]) == ("disabled", "gone")
    assert delivery_row(engine, gone).status == "abandoned"
    assert delivery_row(engine, other).status == "abandoned"


def _matching(uow_factory: Any, engine: Engine, endpoint_id: str, transfer_ids: list[str]) -> Any:
    """For each of these transfers' events: (matches the endpoint by the domain's rule,
    has a delivery for it)."""
    with uow_factory() as uow:
        record = uow.endpoints.get(endpoint_id)
    assert record is not None
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT e.id, e.type, t.source_account_id, t.destination_account_id,"
                " EXISTS (SELECT 1 FROM webhook_deliveries d"
                "         WHERE d.event_id = e.id AND d.endpoint_id = :endpoint) AS delivered"
                " FROM events e JOIN transfers t ON t.id = e.transfer_id"
                " WHERE e.transfer_id = ANY(:ids)"
            ),
            {"endpoint": endpoint_id, "ids": transfer_ids},
        ).all()
    assert len(rows) == len(transfer_ids)
    return {
        row.id: (
            endpoint_matches(
                record,
                row.type,
                {a for a in (row.source_account_id, row.destination_account_id) if a},
            ),
            row.delivered,
        )
        for row in rows
    }


def test_reenabling_replays_exactly_the_matching_events_missed_while_disabled(
    uow_factory: Any, engine: Engine, books: Books, endpoints: Any
) -> None:
    watched, empty, elsewhere = books.open_account(), books.open_account(), books.open_account()
    every = endpoints()  # account_ids stored as a JSON null
    posted_only = endpoints(events=["transfer.posted"], account_ids=[watched])
    rejected_only = endpoints(events=["transfer.rejected"], account_ids=[empty, watched])
    theirs = endpoints(account_ids=[elsewhere])
    hooks = (every, posted_only, rejected_only, theirs)
    clock = Clock()
    for hook in hooks:
        webhooks.update_endpoint(
            uow_factory, AllowAll(), hook["id"], {"status": "disabled"}, replay_events_max=100
        )
    moves = [
        (TransferKind.DEPOSIT, None, watched),  # posted, watched
        (TransferKind.WITHDRAWAL, empty, None),  # rejected (insufficient funds), empty
        (TransferKind.DEPOSIT, None, empty),  # posted, empty
    ]
    transfer_ids = [
        books.accept(kind, source, destination, 1) for kind, source, destination in moves
    ]
    posting.post_transfers(uow_factory, transfer_ids, clock=clock)
    for hook in hooks:
        assert not any(
            d for _, d in _matching(uow_factory, engine, hook["id"], transfer_ids).values()
        )

    replayed = {}
    for hook in hooks:
        enabled = webhooks.update_endpoint(
            uow_factory,
            AllowAll(),
            hook["id"],
            {"status": "enabled"},
            replay_events_max=100,
            clock=clock,
        )
        replayed[hook["id"]] = enabled["replayed"]
    for hook in hooks:
        seen = _matching(uow_factory, engine, hook["id"], transfer_ids)
        assert all(matches == delivered for matches, delivered in seen.values()), hook
    assert replayed[every["id"]] >= 3  # and events of other tests' transfers, if any
    assert (replayed[posted_only["id"]], replayed[rejected_only["id"]]) == (1, 1)
    assert replayed[theirs["id"]] == 0
    # A replay since the disable finds nothing more to create.
    again = webhooks.replay_endpoint(
        uow_factory, posted_only["id"], since=clock.now - timedelta(days=3651), events_max=100
    )
    assert again["created"] == 0


def test_reenabling_replays_a_transaction_to_an_endpoint_watching_one_of_its_legs(
    uow_factory: Any, engine: Engine, books: Books, endpoints: Any
) -> None:
    payer, payee, fees, bystander = (books.open_account() for _ in range(4))
    books.move(TransferKind.DEPOSIT, None, payer, 50)
    # The watched account is neither a source nor a destination column: only a leg.
    watching_fees = endpoints(account_ids=[fees])
    watching_bystander = endpoints(account_ids=[bystander])
    clock = Clock()
    for hook in (watching_fees, watching_bystander):
        webhooks.update_endpoint(
            uow_factory, AllowAll(), hook["id"], {"status": "disabled"}, replay_events_max=100
        )
    split = movements.accept_transaction(
        uow_factory,
        NullIdempotencyCache(),
        lambda shard: None,
        keyed=movements.Keyed(books.key, secrets.token_hex(8), "h"),
        legs=[Leg(payer, -30), Leg(payee, 27), Leg(fees, 3)],
        description=None,
        metadata={},
        effective_at=None,
    )
    assert isinstance(split, Response), split
    posting.post_transfers(uow_factory, [split.body["id"]], clock=clock)

    replayed = {
        hook["id"]: webhooks.update_endpoint(
            uow_factory,
            AllowAll(),
            hook["id"],
            {"status": "enabled"},
            replay_events_max=100,
            clock=clock,
        )["replayed"]
        for hook in (watching_fees, watching_bystander)
    }
    assert replayed == {watching_fees["id"]: 1, watching_bystander["id"]: 0}
    with engine.connect() as connection:
        delivered = connection.scalar(
            text(
                "SELECT count(*) FROM webhook_deliveries d JOIN events e ON e.id = d.event_id"
                " WHERE e.transfer_id = :id AND d.endpoint_id = :endpoint"
            ),
            {"id": split.body["id"], "endpoint": watching_fees["id"]},
        )
    assert delivered == 1


def test_enabling_waits_for_a_posting_in_flight_and_replays_its_event(
    uow_factory: Any, engine: Engine, books: Books, endpoints: Any
) -> None:
    account = books.open_account()
    hook = endpoints(account_ids=[account])
    webhooks.update_endpoint(
        uow_factory, AllowAll(), hook["id"], {"status": "disabled"}, replay_events_max=100
    )
    clock = Clock()
    transfer_id = books.accept(TransferKind.DEPOSIT, None, account, 1)
    errors: list[str] = []
    # A posting whose statement ran while the endpoint was disabled, not yet committed.
    paused_factory, gate = watched_factory(uow_factory, errors, "transfers.finalize")
    in_flight, in_flight_outcome = in_thread(
        lambda: posting.post_transfers(paused_factory, [transfer_id], clock=clock)
    )
    assert gate["paused"].wait(lock_wait_timeout_seconds)
    enabling, enabled = in_thread(
        lambda: webhooks.update_endpoint(
            uow_factory,
            AllowAll(),
            hook["id"],
            {"status": "enabled"},
            replay_events_max=100,
            clock=clock,
        )
    )
    waited = wait_for_lock_waiter(engine)
    gate["resume"].set()
    for thread in (in_flight, enabling):
        thread.join(60)
    assert "error" not in in_flight_outcome and "error" not in enabled, (in_flight_outcome, enabled)
    assert waited, "enabling waits for the postings still writing events"
    assert enabled["result"]["replayed"] == 1
    assert list(_matching(uow_factory, engine, hook["id"], [transfer_id]).values()) == [
        (True, True)
    ]


def test_a_trickling_receiver_times_out_each_attempt_and_is_abandoned_on_schedule(
    uow_factory: Any, engine: Engine, books: Books, endpoints: Any
) -> None:
    trickler = start_trickler(0.3)
    timeout_seconds = 1.0
    sender = HttpxSender(
        Settings(webhook_timeout_seconds=timeout_seconds),
        AddressGuard(development=True),
    )
    try:
        account = books.open_account()
        endpoints(url=trickler.url("/slow"), account_ids=[account])
        clock = Clock()
        [delivery_id] = post(uow_factory, books, clock, (TransferKind.DEPOSIT, None, account))
        schedule = (1.0,)
        assert attempt(uow_factory, sender, delivery_id, clock, schedule=schedule) is (
            DeliveryStatus.FAILED
        )
        clock.advance(1)
        assert attempt(uow_factory, sender, delivery_id, clock, schedule=schedule) is (
            DeliveryStatus.ABANDONED
        )
    finally:
        sender.close()
        trickler.stop()
    log = webhooks.get_delivery(uow_factory, delivery_id)["attempt_log"]
    assert [(a["status_code"], a["error"]) for a in log] == [(None, "timeout")] * 2
    assert all(a["duration_milliseconds"] < (timeout_seconds + 0.75) * 1000 for a in log)
    assert delivery_row(engine, delivery_id).enqueued_until is None


class _ReceiverClock:
    """standardwebhooks' view of the time: the injected clock's, as a receiver living
    through the same hour would have."""

    def __init__(self, clock: Clock) -> None:
        clock_ref = clock

        class Now(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> Any:  # type: ignore[override]
                return clock_ref.now.astimezone(tz)

        self.datetime = Now


def test_a_receiver_down_for_an_hour_then_back_gets_every_event_signed(
    uow_factory: Any,
    engine: Engine,
    books: Books,
    endpoints: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()  # nobody listens yet: connections are refused
    clock = Clock()
    monkeypatch.setattr(standardwebhooks.webhooks, "datetime", _ReceiverClock(clock).datetime)
    sender = HttpxSender(Settings(webhook_timeout_seconds=2.0), AddressGuard(development=True))
    account = books.open_account()
    hook = endpoints(url=f"http://127.0.0.1:{port}/back", account_ids=[account])
    deliveries = post(uow_factory, books, clock, *[(TransferKind.DEPOSIT, None, account)] * 5)
    with engine.connect() as connection:
        event_ids = set(
            connection.scalars(
                text("SELECT event_id FROM webhook_deliveries WHERE id = ANY(:ids)"),
                {"ids": deliveries},
            )
        )
    schedule = tuple(float(s) for s in DEFAULT_RETRY_SCHEDULE_SECONDS)
    start, receiver, verified = clock.now, None, {}
    try:
        for _ in range(outage_rounds_max):
            if receiver is None and clock.now - start >= timedelta(seconds=outage_seconds):
                receiver = start_receiver(port)
            with engine.connect() as connection:
                due = list(
                    connection.scalars(
                        text(
                            "SELECT id FROM webhook_deliveries WHERE id = ANY(:ids)"
                            " AND status IN ('pending', 'failed') AND next_attempt_at <= :now"
                        ),
                        {"ids": deliveries, "now": clock.now},
                    )
                )
                upcoming = connection.scalar(
                    text(
                        "SELECT min(next_attempt_at) FROM webhook_deliveries"
                        " WHERE id = ANY(:ids) AND status IN ('pending', 'failed')"
                    ),
                    {"ids": deliveries},
                )
            for delivery_id in due:
                attempt(
                    uow_factory, sender, delivery_id, clock, schedule=schedule, jitter=lambda: 1.0
                )
            if receiver is not None:
                # The receiver verifies each request as it arrives: at the injected time.
                for request in receiver.requests_to("/back"):
                    event = Webhook(hook["secret"]).verify(request.body, request.headers)
                    verified.setdefault(event["id"], event)
            if upcoming is None:
                break
            clock.now = max(clock.now + timedelta(seconds=1), upcoming)
    finally:
        sender.close()
        if receiver is not None:
            receiver.stop()
    assert receiver is not None, "the outage ended"
    assert set(verified) == event_ids, "every event delivered, each signature verified"
    assert len(receiver.requests_to("/back")) == len(event_ids), "each once"
    for delivery_id in deliveries:
        row = delivery_row(engine, delivery_id)
        assert row.status == "succeeded"
        # Refused on each scheduled attempt of the hour (5 s, 30 s, 2 min, 10 min, 30 min,
        # then 1 h with +10 % jitter ends after it), then delivered.
        assert row.attempts == 7
    assert clock.now - start < timedelta(hours=2)
