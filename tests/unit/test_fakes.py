"""The in-memory unit of work behaves as the PostgreSQL adapters do where the use cases rely
on it: uncommitted work is dropped, unique keys and constraints refuse what the schema
refuses, claims take claimable transfers oldest first in whole units cut at their limit and
skip what another transaction holds, and failed postings are counted, delayed and quarantined
as RECORD_FAILURE does."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fakes import (
    LIMITATIONS_HIT,
    TEST_API_KEY_ID,
    FakeIntegrityError,
    FakeLimitationError,
    FakeLockTimeoutError,
    FakeStore,
)
from scenario import DEPOSIT, accept_batch, deposit, fund, item_ids, movement, new_account

from ledger_core.domain.model import Entry, Posted, Rejected, RejectionReason
from ledger_core.service_layer.ports import NewBatch, NewTransfer, Outbox, PendingWrite


@pytest.fixture
def alice(store) -> str:
    return new_account(store)


def new_transfer(store: FakeStore, account_id: str, transfer_id: str, **changes) -> NewTransfer:
    values = {
        "id": transfer_id,
        "kind": "deposit",
        "source_account_id": store.system_account_id("USD"),
        "destination_account_id": account_id,
        "amount": 5,
        "currency": "USD",
        "description": None,
        "metadata": {},
    } | changes
    return NewTransfer(**values)


def write(store: FakeStore, account_id: str, key: str, **changes) -> PendingWrite:
    return PendingWrite(
        new_transfer(store, account_id, f"tr_{key}", **changes), TEST_API_KEY_ID, key, "h"
    )


def claimed_ids(store: FakeStore, **kwargs) -> list[str]:
    with store() as uow:
        return [c.id for c in uow.transfers.claim(**kwargs).transfers]


# --- transactions ---------------------------------------------------------------------------


def test_uncommitted_work_is_dropped_and_committed_work_kept(store, alice):
    with store() as uow:
        uow.transfers.add_pending([write(store, alice, "dropped")])
    assert "tr_dropped" not in store.state.transfers
    with store() as uow:
        uow.transfers.add_pending([write(store, alice, "kept")])
        uow.commit()
    assert store.status("tr_kept") == "pending"


def test_sequences_are_not_rolled_back(store, alice):
    with store() as uow:
        uow.transfers.add_pending([write(store, alice, "a")])
    with store() as uow:
        uow.transfers.add_pending([write(store, alice, "b")])
        uow.commit()
    deposit(store, alice)
    seqs = sorted(t.seq for t in store.state.transfers.values())
    assert len(seqs) == 2 and seqs[1] - seqs[0] == 1 and seqs[0] >= 2


def test_a_failed_statement_aborts_the_transaction_and_commit_rolls_it_back(store, alice):
    with store() as uow:
        uow.transfers.add_pending([write(store, alice, "first")])
        with pytest.raises(FakeIntegrityError):
            uow.transfers.add_pending([write(store, "acc_gone", "second")])
        with pytest.raises(FakeIntegrityError, match="aborted"):
            uow.transfers.get("tr_first")
        uow.commit()
    assert store.state.transfers == {}


def test_a_clean_transaction_sees_what_others_commit(store, alice):
    with store() as reader:
        assert reader.transfers.get("tr_later") is None
        with store() as writer:
            writer.transfers.add_pending([write(store, alice, "later")])
            writer.commit()
        assert reader.transfers.get("tr_later") is not None


def test_two_writers_that_both_commit_are_beyond_the_fake(store, alice):
    with store() as first:
        first.transfers.add_pending([write(store, alice, "one")])
        with store() as second:
            second.transfers.add_pending([write(store, alice, "two")])
            second.commit()
        with pytest.raises(FakeLimitationError):
            first.commit()
    assert LIMITATIONS_HIT
    LIMITATIONS_HIT.clear()  # expected here; the conftest fails any other test that hits one


def test_a_lock_nobody_releases_times_out_as_the_statement_would(store, alice):
    with store() as holder:
        holder.accounts.lock([alice])
        with store() as waiter, pytest.raises(FakeLockTimeoutError):
            waiter.accounts.lock([alice])


def test_a_lock_released_by_the_holders_commit_is_taken_on_fresh_rows(store, alice):
    with store() as holder:
        holder.accounts.lock([alice])
        holder.accounts.set_balances({alice: 7})
        store.on_lock_wait = lambda other: other.commit()
        with store() as waiter:
            assert waiter.accounts.lock([alice])[alice].balance == 7


# --- constraints ----------------------------------------------------------------------------


def test_a_key_stores_one_transfer_even_twice_in_one_statement(store, alice):
    with store() as uow:
        stored = uow.transfers.add_pending(
            [write(store, alice, "k"), write(store, alice, "k", id="tr_again")]
        )
        uow.commit()
    assert list(stored) == ["tr_k"]
    with store() as uow:
        assert uow.transfers.add_pending([write(store, alice, "k", id="tr_third")]) == {}
        found = uow.transfers.by_idempotency_keys([(TEST_API_KEY_ID, "k"), (TEST_API_KEY_ID, "x")])
    assert list(found) == [(TEST_API_KEY_ID, "k")]
    assert found[(TEST_API_KEY_ID, "k")].record.id == "tr_k"


def test_writes_stored_together_take_their_order_from_their_keys(store, alice):
    with store() as uow:
        uow.transfers.add_pending([write(store, alice, "b"), write(store, alice, "a")])
        uow.commit()
    assert store.transfer("tr_a").seq < store.transfer("tr_b").seq


@pytest.mark.parametrize(
    ("changes", "constraint"),
    [
        ({"amount": 0}, "amount_positive"),
        ({"amount": 2**63}, "amount_positive"),
        ({"kind": "gift"}, "kind_known"),
        ({"destination_account_id": "acc_gone"}, "fk_transfers"),
        ({"shard": 2**15}, "shard"),
    ],
)
def test_a_transfer_the_schema_refuses_is_refused(store, alice, changes, constraint):
    with store() as uow, pytest.raises(FakeIntegrityError, match=constraint):
        uow.transfers.add_pending([write(store, alice, "bad", **changes)])


def test_a_balance_below_zero_without_overdraft_is_refused(store, alice):
    with store() as uow, pytest.raises(FakeIntegrityError, match="no_overdraft"):
        uow.accounts.set_balances({alice: -1})
    lender = new_account(store, overdraft=True)
    with store() as uow:
        uow.accounts.set_balances({lender: -1, "acc_gone": 5})  # no row, no change
        uow.commit()
    assert store.balance(lender) == -1


def test_a_movement_posts_its_entries_once(store, alice):
    transfer_id = deposit(store, alice)
    system = store.system_account_id("USD")
    entries = (Entry(transfer_id, alice, 5, 5, 1), Entry(transfer_id, system, -5, -5, 0))
    with store() as uow:
        uow.entries.add_posted([Posted(transfer_id, entries)])
        uow.commit()
    # uq_entries_transfer_id_leg: a second posting of the same legs is refused.
    with store() as uow, pytest.raises(FakeIntegrityError, match="uq_entries_transfer_id_leg"):
        uow.entries.add_posted([Posted(transfer_id, entries)])


def test_a_batch_key_makes_one_batch(store, alice):
    batch = NewBatch(
        "bat_1", TEST_API_KEY_ID, "k", "h", False, [new_transfer(store, alice, "tr_1")]
    )
    with store() as uow:
        assert uow.transfers.add_batch(batch) is not None
        uow.commit()
    again = NewBatch(
        "bat_2", TEST_API_KEY_ID, "k", "h", False, [new_transfer(store, alice, "tr_2")]
    )
    with store() as uow:
        assert uow.transfers.add_batch(again) is None
        keyed = uow.transfers.batch_by_idempotency_key(TEST_API_KEY_ID, "k")
    assert keyed is not None and keyed.record.id == "bat_1"


# --- claims ---------------------------------------------------------------------------------


def test_claims_take_the_oldest_first_and_stop_at_the_limit(store, alice):
    ids = [deposit(store, alice) for _ in range(4)]
    with store() as uow:
        claim = uow.transfers.claim(shard=0, limit=3)
    assert [c.id for c in claim.transfers] == ids[:3]
    assert claim.full is True
    assert claim.now == store.now()


def test_claims_take_only_their_shard_and_ids_name_any_shard(store, alice):
    transfer_id = deposit(store, alice)
    assert claimed_ids(store, shard=1, limit=10) == []
    assert claimed_ids(store, shard=1, limit=10, only_ids=[transfer_id]) == [transfer_id]


def test_a_group_comes_whole_behind_its_head_and_members_alone_are_not_claimable(store, alice):
    group = item_ids(accept_batch(store, [movement(DEPOSIT, None, alice)] * 3, atomic=True))
    with store() as uow:
        claim = uow.transfers.claim(shard=0, limit=10)
    assert [(c.id, c.group_id) for c in claim.transfers] == [(i, group[0]) for i in group]
    assert claimed_ids(store, shard=0, limit=10, only_ids=group[1:]) == []


def test_heads_cut_off_at_the_limit_stay_locked_until_the_claim_ends(store, alice):
    single = deposit(store, alice)
    group = item_ids(accept_batch(store, [movement(DEPOSIT, None, alice)] * 3, atomic=True))
    with store() as first:
        claim = first.transfers.claim(shard=0, limit=2)
        assert ([c.id for c in claim.transfers], claim.full) == ([single], True)
        assert claimed_ids(store, shard=0, limit=10) == []  # both rows are held
    assert claimed_ids(store, shard=0, limit=10) == [single, *group]


def test_a_retry_that_is_not_due_is_not_claimed_unless_named(store, alice):
    transfer_id = deposit(store, alice)
    with store() as uow:
        uow.transfers.record_posting_failure(
            [transfer_id], error="boom", attempts_max=5, retry_delays_seconds=[30]
        )
        uow.commit()
    assert claimed_ids(store, shard=0, limit=10) == []
    assert claimed_ids(store, shard=0, limit=10, only_ids=[transfer_id]) == [transfer_id]
    store.advance(30)
    assert claimed_ids(store, shard=0, limit=10) == [transfer_id]


def test_failures_are_counted_delayed_by_the_schedule_then_quarantined(store, alice):
    transfer_id = deposit(store, alice)
    retry_at, quarantined = [], []
    for _ in range(4):
        with store() as uow:
            quarantined.append(
                uow.transfers.record_posting_failure(
                    [transfer_id, transfer_id, "tr_nope"],
                    error="boom",
                    attempts_max=4,
                    retry_delays_seconds=[1, 5],
                )
            )
            uow.commit()
        row = store.transfer(transfer_id)
        retry_at.append((row.posting_retry_at - store.now()).total_seconds())
    assert retry_at == [1, 5, 5, 5]  # past the schedule's end, its last delay
    assert quarantined == [[], [], [], [transfer_id]]
    assert (store.status(transfer_id), store.transfer(transfer_id).posting_attempts) == (
        "quarantined",
        4,
    )
    with store() as uow:  # no longer PENDING: not counted again
        uow.transfers.record_posting_failure(
            [transfer_id], error="x", attempts_max=4, retry_delays_seconds=[1]
        )
        uow.commit()
    assert store.transfer(transfer_id).posting_attempts == 4


def test_an_empty_retry_schedule_retries_at_once(store, alice):
    transfer_id = deposit(store, alice)
    with store() as uow:
        uow.transfers.record_posting_failure(
            [transfer_id], error="boom", attempts_max=5, retry_delays_seconds=[]
        )
        uow.commit()
    assert store.transfer(transfer_id).posting_retry_at is None


def test_finalize_changes_only_pending_transfers(store, alice):
    fund(store, alice, 10)
    posted = store.state.by_seq()[0].id
    pending = deposit(store, alice)
    events_before = set(store.state.events)
    with store() as uow:
        uow.transfers.finalize(
            [Rejected(posted, RejectionReason.INSUFFICIENT_FUNDS), Posted(pending, ())],
            now=store.now(),
            outbox=Outbox(store.now(), requeue_after_seconds=120),
        )
        uow.commit()
    assert store.statuses([posted, pending]) == ["posted", "posted"]
    assert store.transfer(posted).rejection_reason is None
    # The outbox is written for what this statement finalized only.
    new_events = [e for i, e in store.state.events.items() if i not in events_before]
    assert [e.transfer_id for e in new_events] == [pending]


def test_stale_shards_counts_transfers_another_posting_holds(store, alice):
    transfer_id = deposit(store, alice)
    store.backdate(transfer_id, 60)
    with store() as holder:
        holder.transfers.claim(shard=0, limit=10)
        with store() as sweeper:
            assert sweeper.transfers.stale_shards(
                older_than=store.now() - timedelta(seconds=30)
            ) == {0: 1}
