"""Posting claims PENDING transfers oldest first (skipping those another posting holds), posts
each once with its entries, balances, status and outbox in one commit, drains within its
bounds, isolates a transfer that fails for a reason other than money by bisection (retried
after its delay, quarantined after attempts_max, released by an operator), refuses to blame
transfers when every one fails, and the sweeper wakes only shards with stale work."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from fakes import FakeStore, RecordingWake, counted, with_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scenario import (
    DEPOSIT,
    TRANSFER,
    WITHDRAWAL,
    accept,
    accept_batch,
    accepted_id,
    deposit,
    fund,
    item_ids,
    movement,
    new_account,
    transfer,
)

from ledger_core.domain import limits
from ledger_core.domain.model import Posted, Rejected, RejectionReason
from ledger_core.domain.rules import posting_shard
from ledger_core.service_layer import posting, webhooks
from ledger_core.service_layer.accounts import get_account
from ledger_core.service_layer.errors import Response, StorageRefusedError, StorageUnavailableError
from ledger_core.service_layer.posting import PostingBrokenError, PostingOptions
from ledger_core.service_layer.reconcile import reconcile

INSUFFICIENT = RejectionReason.INSUFFICIENT_FUNDS
LINKED = RejectionReason.LINKED_TRANSFER_FAILED
# Three attempts, retried after 1 s then 2 s: quarantine within a test's patience.
QUICK = PostingOptions(attempts_max=3, retry_delays_seconds=(1.0, 2.0))


@pytest.fixture
def alice(store) -> str:
    return new_account(store)


@pytest.fixture
def bob(store) -> str:
    return new_account(store)


def poison(store: FakeStore, transfer_id: str, error: Exception | None = None) -> None:
    store.poisoned[transfer_id] = error or StorageRefusedError(f"corrupt row {transfer_id}")


def violated(store: FakeStore) -> dict:
    return {rule: rows for rule, rows in reconcile(store).items() if rows}


def drain(store: FakeStore, **kwargs) -> posting.DrainReport:
    kwargs.setdefault("batch_size_max", 2)
    return posting.drain(store, **kwargs)


# --- post_transfers -------------------------------------------------------------------------


def test_posting_a_deposit_moves_money_from_the_system_account(store, alice):
    transfer_id = deposit(store, alice, 40)
    [outcome] = posting.post_transfers(store, [transfer_id])
    system = store.system_account_id("USD")
    assert isinstance(outcome, Posted)
    assert store.balance(alice) == 40
    assert store.balance(system) == -40
    row = store.transfer(transfer_id)
    assert (row.status, row.posted_at, row.finalized_at) == ("posted", store.now(), store.now())
    assert get_account(store, alice)["balance"] == {"posted": 40, "pending": 0, "available": 40}
    entries = [(e.account_id, e.amount, e.balance_after) for e in store.state.entries]
    assert entries == [(alice, 40, 40), (system, -40, -40)]  # credits first
    assert violated(store) == {}


def test_posting_twice_posts_once(store, alice):
    transfer_id = deposit(store, alice, 40)
    assert len(posting.post_transfers(store, [transfer_id, transfer_id])) == 1
    commits = store.commits
    assert posting.post_transfers(store, [transfer_id]) == []
    assert store.commits == commits
    assert store.balance(alice) == 40
    assert len(store.state.entries) == 2


def test_insufficient_funds_rejects_and_changes_no_balance(store, alice):
    fund(store, alice, 100)
    balances = store.balances()
    transfer_id = accepted_id(accept(store, movement(WITHDRAWAL, alice, None, 101)))
    outcomes = posting.post_transfers(store, [transfer_id])
    assert outcomes == [Rejected(transfer_id, INSUFFICIENT, alice)]
    assert store.balances() == balances
    assert len(store.state.entries) == 2  # those of the funding deposit only
    row = store.transfer(transfer_id)
    assert (row.status, row.rejection_reason, row.posted_at) == (
        "rejected",
        "insufficient_funds",
        None,
    )
    assert get_account(store, alice)["balance"] == {"posted": 100, "pending": 0, "available": 100}
    assert posting.post_transfers(store, [transfer_id]) == []  # a rejection is final too


def test_overdraft_account_may_be_withdrawn_into_the_negative(store):
    account_id = new_account(store, overdraft=True)
    transfer_id = accepted_id(accept(store, movement(WITHDRAWAL, account_id, None, 100)))
    [outcome] = posting.post_transfers(store, [transfer_id])
    assert isinstance(outcome, Posted)
    assert store.balance(account_id) == -100


def test_transfers_post_in_acceptance_order_whatever_order_they_are_named_in(store, alice, bob):
    fund(store, alice, 100)
    first = transfer(store, alice, bob, 60)
    second = transfer(store, alice, bob, 60)
    outcomes = posting.post_transfers(store, [second, first])
    assert [o.transfer_id for o in outcomes] == [first, second]
    assert isinstance(outcomes[0], Posted)
    assert outcomes[1] == Rejected(second, INSUFFICIENT, alice)
    assert (store.balance(alice), store.balance(bob)) == (40, 60)


class AllowEveryUrl:
    def check(self, url: str) -> str | None:
        return None


def test_posting_writes_the_outbox_in_its_commit_and_enqueues_after_it(store, alice):
    endpoint = webhooks.create_endpoint(
        store, AllowEveryUrl(), url="https://hooks.example.com/x", events=None,
        account_ids=None, description=None,
    )  # fmt: skip
    fund(store, alice, 10)
    rejected = accepted_id(accept(store, movement(WITHDRAWAL, alice, None, 11)))
    enqueued: list[tuple[list[str], int, int]] = []

    def enqueue(ids: list[str]) -> None:
        enqueued.append((ids, len(store.state.deliveries), len(store.open_uows)))

    later = store.now() + timedelta(seconds=7)
    options = PostingOptions(enqueue_deliveries=enqueue, clock=lambda: later)
    posting.post_transfers(store, [rejected], options=options)
    [event] = [e for e in store.state.events.values() if e.transfer_id == rejected]
    assert event.type == "transfer.rejected"
    assert event.created_at == later  # the outbox's clock, when one is given
    [delivery] = [d for d in store.state.deliveries.values() if d.event_id == event.id]
    assert delivery.endpoint_id == endpoint["id"]
    assert enqueued == [([delivery.id], 2, 0)]  # committed with the funding's, none open
    assert posting.post_transfers(store, [rejected]) == []
    assert len(store.state.events) == 2  # a transfer is final once, so it has one event


def test_a_failed_enqueue_of_deliveries_is_logged_not_raised(store, alice, caplog):
    webhooks.create_endpoint(
        store, AllowEveryUrl(), url="https://hooks.example.com/x", events=None,
        account_ids=None, description=None,
    )  # fmt: skip

    def broken(ids: list[str]) -> None:
        raise ConnectionError("broker down")

    transfer_id = deposit(store, alice)
    with caplog.at_level(logging.ERROR, logger="ledger_core.service_layer.posting"):
        [outcome] = posting.post_transfers(
            store, [transfer_id], options=PostingOptions(enqueue_deliveries=broken)
        )
    assert isinstance(outcome, Posted)
    assert store.status(transfer_id) == "posted"
    assert "enqueue of 1 webhook deliveries failed" in caplog.text


def test_ids_that_are_not_pending_transfers_post_nothing(store):
    assert posting.post_transfers(store, ["tr_nope"]) == []
    assert posting.post_transfers(store, []) == []
    assert store.commits == 0


def test_batch_size_is_bounded_after_removing_duplicates(store):
    limit = limits.posting_batch_size_max
    assert posting.post_transfers(store, [f"tr_{i}" for i in range(limit)] * 2) == []
    with pytest.raises(ValueError, match="exceeds"):
        posting.post_transfers(store, [f"tr_{i}" for i in range(limit + 1)])


def test_metrics_count_what_a_batch_finalized(store, alice, metrics):
    ids = [
        deposit(store, alice, 5),
        accepted_id(accept(store, movement(WITHDRAWAL, alice, None, 9))),
    ]
    posting.post_transfers(store, ids, options=PostingOptions(metrics=metrics))
    assert metrics.batches == [2]
    assert metrics.finalized == [{"posted": 1, "rejected": 1}]


# --- claims ---------------------------------------------------------------------------------


def test_a_transfer_another_posting_holds_is_skipped_then_posted_once_it_is_free(store, alice):
    held, free = deposit(store, alice, 1), deposit(store, alice, 2)
    with store() as other:
        claim = other.transfers.claim(shard=0, limit=1)
        assert [c.id for c in claim.transfers] == [held]
        report = drain(store)
        assert (report.transfers, store.status(held), store.status(free)) == (
            1,
            "pending",
            "posted",
        )
    # The holder rolled back: its transfer is claimable again.
    assert drain(store).transfers == 1
    assert store.statuses([held, free]) == ["posted", "posted"]


def test_drain_posts_only_its_shard(store):
    shards = 8
    accounts = {}
    while len(accounts) < 2:
        account_id = new_account(store)
        accounts.setdefault(posting_shard(account_id, shards), account_id)
    (shard_a, a), (shard_b, b) = sorted(accounts.items())
    fund(store, a, 10)
    fund(store, b, 10)
    from_a = accepted_id(accept(store, movement(WITHDRAWAL, a, None, 1), shards=shards))
    from_b = accepted_id(accept(store, movement(WITHDRAWAL, b, None, 1), shards=shards))
    assert drain(store, shard=shard_a).transfers == 1
    assert store.statuses([from_a, from_b]) == ["posted", "pending"]
    assert drain(store, shard=shard_b).transfers == 1
    assert store.status(from_b) == "posted"


def test_an_atomic_batch_posts_through_its_heads_shard_whole(store):
    shards = 8
    a, b = (new_account(store) for _ in range(2))
    while posting_shard(b, shards) == posting_shard(a, shards):
        b = new_account(store)
    fund(store, a, 10)
    fund(store, b, 10)
    requests = [movement(WITHDRAWAL, a, None, 1), movement(WITHDRAWAL, b, None, 2)]
    ids = item_ids(accept_batch(store, requests, atomic=True, shards=shards))
    assert drain(store, shard=posting_shard(b, shards)).transfers == 0
    assert drain(store, shard=posting_shard(a, shards)).transfers == 2
    assert store.statuses(ids) == ["posted", "posted"]
    assert (store.balance(a), store.balance(b)) == (9, 8)


def test_an_atomic_batch_with_one_failing_item_is_rejected_whole(store, alice, bob):
    fund(store, alice, 100)
    before = deposit(store, bob, 1)
    requests = [
        movement(TRANSFER, alice, bob, 50),
        movement(WITHDRAWAL, bob, None, 1_000),
        movement(TRANSFER, alice, bob, 50),
    ]
    ids = item_ids(accept_batch(store, requests, atomic=True))
    after = transfer(store, alice, bob, 100)
    drain(store, batch_size_max=10)
    assert [store.transfer(i).rejection_reason for i in ids] == [
        "linked_transfer_failed",
        "insufficient_funds",
        "linked_transfer_failed",
    ]
    assert store.statuses([before, after]) == ["posted", "posted"]
    assert (store.balance(alice), store.balance(bob)) == (0, 101)
    assert violated(store) == {}


def test_a_group_bigger_than_the_claim_is_claimed_whole(store, alice):
    ids = item_ids(accept_batch(store, [movement(DEPOSIT, None, alice, 1)] * 5, atomic=True))
    report = posting.post_claimed(store, shard=0, limit=2)
    # Nothing else waited, so the claim was not cut: not full.
    assert (report.claimed, report.full) == (5, False)
    assert store.statuses(ids) == ["posted"] * 5


def test_a_unit_that_does_not_fit_after_a_group_waits_for_the_next_claim(store, alice):
    group = item_ids(accept_batch(store, [movement(DEPOSIT, None, alice, 1)] * 3, atomic=True))
    single = deposit(store, alice, 1)
    report = posting.post_claimed(store, shard=0, limit=2)
    assert (report.claimed, report.full) == (3, True)
    assert store.statuses([*group, single]) == ["posted"] * 3 + ["pending"]


# --- drain ----------------------------------------------------------------------------------


def test_drain_stops_at_the_first_claim_that_is_not_full(store, alice):
    for _ in range(5):
        deposit(store, alice, 1)
    report = drain(store, batch_size_max=2)
    assert report == posting.DrainReport(batches=3, transfers=5, more_work=False)
    assert counted(store, "transfers.claim") == 3


def test_drain_of_exactly_full_batches_needs_one_empty_claim_to_stop(store, alice):
    for _ in range(4):
        deposit(store, alice, 1)
    report = drain(store, batch_size_max=2)
    assert report == posting.DrainReport(batches=3, transfers=4, more_work=False)


def test_drain_stops_at_batches_max_and_says_more_work_waits(store, alice):
    ids = [deposit(store, alice, 1) for _ in range(10)]
    report = drain(store, batch_size_max=2, batches_max=3)
    assert report == posting.DrainReport(batches=3, transfers=6, more_work=True)
    assert store.statuses(ids) == ["posted"] * 6 + ["pending"] * 4


def test_drain_stops_after_seconds_max(store, alice):
    for _ in range(10):
        deposit(store, alice, 1)
    ticks = iter(range(0, 1000, 10))  # every reading of the clock is 10 s later
    report = drain(store, batch_size_max=2, seconds_max=15, monotonic=lambda: next(ticks))
    assert report == posting.DrainReport(batches=2, transfers=4, more_work=True)


def test_drain_with_nothing_to_do_claims_once(store):
    assert drain(store) == posting.DrainReport(batches=1, transfers=0, more_work=False)
    assert store.commits == 0


# --- failures that are not about money ------------------------------------------------------


def funded_transfers(store: FakeStore, count: int) -> list[str]:
    account_id = new_account(store)
    fund(store, account_id, 1_000)
    return [
        accepted_id(accept(store, movement(WITHDRAWAL, account_id, None, 1))) for _ in range(count)
    ]


def test_a_poisoned_transfer_is_isolated_and_the_others_post(store, metrics):
    ids = funded_transfers(store, 5)
    poison(store, ids[2])
    report = posting.post_claimed(store, shard=0, limit=10, options=PostingOptions(metrics=metrics))
    assert report.claimed == 5
    assert [o.transfer_id for o in report.outcomes] == ids[:2] + ids[3:]
    assert all(isinstance(o, Posted) for o in report.outcomes)
    assert report.quarantined == []
    assert store.statuses(ids) == ["posted", "posted", "pending", "posted", "posted"]
    row = store.transfer(ids[2])
    assert row.posting_attempts == 1
    assert row.posting_error == f"StorageRefusedError: corrupt row {ids[2]}"
    assert row.posting_retry_at == store.now() + timedelta(seconds=1)
    assert metrics.failures == ["batch", "transfer"]
    assert violated(store) == {}


def test_bisection_is_bounded_by_twice_the_units(store):
    ids = funded_transfers(store, 8)
    poison(store, ids[5])
    claims_before = counted(store, "transfers.claim")
    posting.post_claimed(store, shard=0, limit=10)
    assert counted(store, "transfers.claim") - claims_before <= 1 + 2 * 8


def test_two_poisoned_transfers_are_both_counted(store):
    ids = funded_transfers(store, 8)
    poison(store, ids[0])
    poison(store, ids[6])
    report = posting.post_claimed(store, shard=0, limit=10)
    assert len(report.outcomes) == 6
    assert [store.transfer(i).posting_attempts for i in ids] == [1, 0, 0, 0, 0, 0, 1, 0]


def test_a_failed_transfer_is_retried_only_once_its_delay_has_passed(store):
    [transfer_id] = funded_transfers(store, 1)
    poison(store, transfer_id)
    assert drain(store).transfers == 1
    assert store.transfer(transfer_id).posting_attempts == 1
    store.advance(0.999)
    assert drain(store).transfers == 0, "retried before its delay"
    store.advance(0.001)
    assert drain(store).transfers == 1
    row = store.transfer(transfer_id)
    assert row.posting_attempts == 2
    # The next delay of the schedule: limits.posting_retry_delays_seconds[1].
    assert row.posting_retry_at == store.now() + timedelta(seconds=5)
    # Named explicitly (tools, bisection), it is tried whatever its delay.
    del store.poisoned[transfer_id]
    [outcome] = posting.post_transfers(store, [transfer_id])
    assert isinstance(outcome, Posted)


def test_a_transfer_failing_attempts_max_times_is_quarantined_and_left_alone(store, metrics):
    [transfer_id] = funded_transfers(store, 1)
    poison(store, transfer_id)
    options = PostingOptions(attempts_max=3, retry_delays_seconds=(1.0, 2.0), metrics=metrics)
    reports = []
    for delay in (1.0, 2.0, 0.0):
        reports.append(posting.post_claimed(store, shard=0, limit=10, options=options))
        store.advance(delay)
    assert [r.quarantined for r in reports] == [[], [], [transfer_id]]
    row = store.transfer(transfer_id)
    assert (row.status, row.posting_attempts) == ("quarantined", 3)
    assert metrics.failures.count("quarantined") == 1
    store.advance(3600)
    assert drain(store, options=options).transfers == 0
    assert violated(store) == {"transfer_quarantined": [(transfer_id, 3)]}
    assert get_account(store, row.source_account_id)["balance"]["pending"] == 0


def test_a_released_transfer_posts_with_a_fresh_count_of_attempts(store):
    [transfer_id] = funded_transfers(store, 1)
    poison(store, transfer_id)
    for _ in range(3):
        posting.post_claimed(store, shard=0, limit=10, options=QUICK)
        store.advance(10)
    assert store.status(transfer_id) == "quarantined"
    del store.poisoned[transfer_id]  # the operator fixed the cause
    assert posting.release_quarantined(store, transfer_id) is True
    row = store.transfer(transfer_id)
    assert (row.status, row.posting_attempts, row.posting_retry_at) == ("pending", 0, None)
    assert posting.release_quarantined(store, transfer_id) is False  # pending now
    assert drain(store).transfers == 1
    assert store.status(transfer_id) == "posted"
    assert posting.release_quarantined(store, transfer_id) is False  # posted


def test_a_poisoned_member_fails_its_whole_group_and_the_neighbours_post(store, alice):
    fund(store, alice, 100)
    single = accepted_id(accept(store, movement(WITHDRAWAL, alice, None, 1)))
    group = item_ids(accept_batch(store, [movement(WITHDRAWAL, alice, None, 1)] * 3, atomic=True))
    last = accepted_id(accept(store, movement(WITHDRAWAL, alice, None, 1)))
    poison(store, group[1])
    report = posting.post_claimed(store, shard=0, limit=10, options=QUICK)
    assert [o.transfer_id for o in report.outcomes] == [single, last]
    assert store.statuses(group) == ["pending"] * 3
    assert [store.transfer(i).posting_attempts for i in group] == [1, 1, 1]
    for _ in range(2):
        store.advance(10)
        posting.post_claimed(store, shard=0, limit=10, options=QUICK)
    assert store.statuses(group) == ["quarantined"] * 3


def test_when_every_unit_fails_the_system_is_broken_and_nobody_is_counted(store, metrics):
    ids = funded_transfers(store, 3)
    store.faults["transfers.finalize"] = StorageRefusedError("column does not exist")
    with pytest.raises(PostingBrokenError):
        posting.post_claimed(store, shard=0, limit=10, options=PostingOptions(metrics=metrics))
    assert [store.transfer(i).posting_attempts for i in ids] == [0, 0, 0]
    assert store.statuses(ids) == ["pending"] * 3
    assert "systematic" in metrics.failures
    assert "transfer" not in metrics.failures


def test_a_batch_of_one_that_fails_is_counted_it_cannot_tell_the_system_is_broken(store):
    [transfer_id] = funded_transfers(store, 1)
    store.faults["transfers.finalize"] = StorageRefusedError("column does not exist")
    report = posting.post_claimed(store, shard=0, limit=10)
    assert (report.claimed, report.outcomes) == (1, [])
    assert store.transfer(transfer_id).posting_attempts == 1


def test_a_database_that_is_away_fails_the_batch_as_it_was(store):
    ids = funded_transfers(store, 3)
    poison(store, ids[1], StorageUnavailableError("connection lost"))
    claims = counted(store, "transfers.claim")
    with pytest.raises(StorageUnavailableError):
        posting.post_claimed(store, shard=0, limit=10)
    assert counted(store, "transfers.claim") == claims + 1, "no bisection"
    assert store.statuses(ids) == ["pending"] * 3
    assert [store.transfer(i).posting_attempts for i in ids] == [0, 0, 0]


def test_a_failure_before_anything_is_claimed_is_not_the_transfers_fault(store):
    ids = funded_transfers(store, 2)
    store.faults["transfers.claim"] = RuntimeError("bug in the claim")
    with pytest.raises(RuntimeError, match="bug in the claim"):
        posting.post_claimed(store, shard=0, limit=10)
    assert [store.transfer(i).posting_attempts for i in ids] == [0, 0]


def test_drain_goes_on_after_isolating_a_poisoned_transfer_from_a_full_batch(store):
    ids = funded_transfers(store, 5)
    poison(store, ids[0])
    report = drain(store, batch_size_max=2)
    assert store.statuses(ids[1:]) == ["posted"] * 4 or report.more_work


def test_releasing_a_quarantined_group_never_posts_part_of_it(store, alice):
    fund(store, alice, 100)
    group = item_ids(accept_batch(store, [movement(WITHDRAWAL, alice, None, 1)] * 3, atomic=True))
    poison(store, group[2])
    for _ in range(3):
        posting.post_claimed(store, shard=0, limit=10, options=QUICK)
        store.advance(10)
    assert store.statuses(group) == ["quarantined"] * 3
    del store.poisoned[group[2]]
    posting.release_quarantined(store, group[0])  # the id the operator sees first: the head
    drain(store)
    statuses = store.statuses(group)
    assert len(set(statuses)) == 1, f"an atomic batch was split: {statuses}"


# --- the sweeper ----------------------------------------------------------------------------


def test_wake_stale_wakes_only_shards_with_stale_claimable_transfers(store):
    shards = 8
    by_shard: dict[int, str] = {}
    while len(by_shard) < 5:
        account_id = new_account(store, overdraft=True)
        by_shard.setdefault(posting_shard(account_id, shards), account_id)
    (
        (s_stale, a_stale),
        (s_fresh, a_fresh),
        (s_posted, a_posted),
        (s_retry, a_retry),
        (s_group, a_group),
    ) = sorted(by_shard.items())

    def withdraw(account_id: str) -> str:
        return accepted_id(accept(store, movement(WITHDRAWAL, account_id, None, 1), shards=shards))

    stale = [withdraw(a_stale), withdraw(a_stale)]
    withdraw(a_fresh)
    posted = withdraw(a_posted)
    posting.post_transfers(store, [posted])
    retrying = withdraw(a_retry)
    poison(store, retrying)
    posting.post_transfers(store, [retrying])  # fails: due again in 1 s
    group = item_ids(
        accept_batch(
            store, [movement(WITHDRAWAL, a_group, None, 1)] * 3, atomic=True, shards=shards
        )
    )
    for transfer_id in [*stale, posted, retrying, *group]:
        store.backdate(transfer_id, 60)
    wake = RecordingWake(store)
    found = posting.wake_stale(store, wake, age_min_seconds=30, clock=store.now)
    # The group counts once: only its head is claimable.
    assert found == {s_stale: 2, s_group: 1}
    assert wake.shards == sorted([s_stale, s_group])
    store.advance(1)  # the failed one is due again
    found = posting.wake_stale(store, RecordingWake(store), age_min_seconds=30, clock=store.now)
    assert found == {s_stale: 2, s_retry: 1, s_group: 1}
    assert s_fresh not in found and s_posted not in found


def test_wake_stale_with_nothing_stale_wakes_nobody(store, alice):
    deposit(store, alice)
    wake = RecordingWake(store)
    assert posting.wake_stale(store, wake, age_min_seconds=30, clock=store.now) == {}
    assert wake.calls == []


# --- the books, whatever happens ------------------------------------------------------------


operations = st.lists(
    st.tuples(
        st.sampled_from(["deposit", "withdrawal", "transfer", "batch", "atomic", "drain"]),
        st.integers(0, 3),
        st.integers(0, 3),
        st.one_of(st.integers(1, 300), st.sampled_from([2**62, 2**63 - 1])),
    ),
    max_size=12,
)


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(operations, st.lists(st.booleans(), min_size=4, max_size=4), st.integers(1, 4))
def test_books_always_balance(ops, overdrafts, batch_size_max):
    """Whatever is accepted and posted, entries explain every balance, the books sum to zero,
    atomic batches end all alike, and every acceptance woke its shard."""
    store = FakeStore()
    wake = RecordingWake(store)
    accounts = [new_account(store, overdraft=o) for o in overdrafts]
    groups: list[list[str]] = []
    accepted = 0

    def request(kind: str, i: int, j: int, amount: int):
        if kind == "deposit":
            return movement(DEPOSIT, None, accounts[i], amount)
        if kind == "withdrawal":
            return movement(WITHDRAWAL, accounts[i], None, amount)
        return movement(TRANSFER, accounts[i], accounts[j], amount)

    for kind, i, j, amount in ops:
        if kind == "drain":
            posting.drain(store, batch_size_max=batch_size_max)
            continue
        if kind in ("batch", "atomic"):
            requests = [
                request(k, i, (i + n + 1) % 4, amount)
                for n, k in enumerate(["deposit", "transfer", "withdrawal"])
            ]
            result = accept_batch(store, requests, atomic=kind == "atomic", wake=wake)
            ids = item_ids(result)
            accepted += 1
            if kind == "atomic":
                groups.append(ids)
            continue
        result = accept(store, request(kind, i, j, amount), wake=wake)
        if isinstance(result, Response):
            accepted += 1
        else:
            assert (kind, i, result.code) == ("transfer", j, "same_account")
    while posting.drain(store, batch_size_max=batch_size_max).more_work:
        pass

    assert violated(store) == {}
    assert with_status(store, "pending") == []
    for group in groups:
        assert len(set(store.statuses(group))) == 1, "an atomic batch was split"
    assert len(wake.calls) == accepted
    balances = store.balances()
    assert sum(balances.values()) == 0


def test_an_error_that_is_not_the_storage_refusing_is_not_blamed_on_transfers(store):
    # A time limit, or a bug outside the storage: the batch is tried again as it was.
    ids = funded_transfers(store, 3)
    store.faults["transfers.finalize"] = RuntimeError("soft time limit exceeded")
    with pytest.raises(RuntimeError, match="soft time limit"):
        posting.post_claimed(store, shard=0, limit=10)
    assert store.statuses(ids) == ["pending"] * 3
    assert [store.transfer(i).posting_attempts for i in ids] == [0, 0, 0]


def test_a_quarantined_transfer_given_up_on_is_rejected_with_its_event(store):
    [transfer_id] = funded_transfers(store, 1)
    poison(store, transfer_id)
    for _ in range(3):
        posting.post_claimed(store, shard=0, limit=10, options=QUICK)
        store.advance(10)
    assert store.status(transfer_id) == "quarantined"
    assert posting.reject_quarantined(store, transfer_id) == [transfer_id]
    row = store.transfer(transfer_id)
    assert (row.status, row.rejection_reason) == ("rejected", "posting_failed")
    events = [e for e in store.state.events.values() if e.transfer_id == transfer_id]
    assert [e.type for e in events] == ["transfer.rejected"]
    assert posting.reject_quarantined(store, transfer_id) == []  # rejected already
    assert violated(store) == {}
