"""The in-memory holds, payments, legs and entries behave as their SQL does where the use
cases rely on it: one action per hold decided by CLAIM_ACTION's predicate (expiry
included), due holds found as DUE_HOLDS finds them (skipping locked ones), keyless members
stored after their movement, and the schema's checks on movements, legs, entries,
balances with holds, and payments."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fakes import TEST_API_KEY_ID, FakeIntegrityError, FakeStore
from movement_scenario import accepted, hold, post_all
from scenario import fund, new_account

from ledger_core.domain.model import Entry, Leg, Posted
from ledger_core.service_layer.ports import NewPayment, NewTransfer, PendingWrite


@pytest.fixture
def alice(store: FakeStore) -> str:
    account_id = new_account(store)
    fund(store, account_id, 100)
    return account_id


@pytest.fixture
def bob(store: FakeStore) -> str:
    return new_account(store)


def active_hold(store: FakeStore, source: str, destination: str, **kwargs) -> str:
    hold_id = accepted(hold(store, source, destination, 10, **kwargs))["id"]
    post_all(store)
    assert store.hold(hold_id).status == "active"
    return hold_id


def claim(store: FakeStore, hold_id: str, action_id: str, **kwargs) -> bool:
    with store() as uow:
        claimed = uow.holds.claim_action(hold_id, action_id, **kwargs)
        uow.commit()
    return claimed


def movement(**changes) -> NewTransfer:
    values = {
        "id": "tr_x",
        "kind": "transaction",
        "source_account_id": None,
        "destination_account_id": None,
        "amount": 5,
        "currency": "USD",
        "description": None,
        "metadata": {},
    } | changes
    return NewTransfer(**values)


def store_one(store: FakeStore, transfer: NewTransfer, key: str | None = "k") -> None:
    with store() as uow:
        uow.transfers.add_pending(
            [PendingWrite(transfer, TEST_API_KEY_ID, key, None if key is None else "h")]
        )
        uow.commit()


# --- one action per hold --------------------------------------------------------------------


def test_an_action_is_claimed_only_before_the_expiry(store, alice, bob):
    hold_id = active_hold(store, alice, bob, expires_in_seconds=60)
    expires_at = store.hold(hold_id).expires_at
    assert expires_at is not None
    assert not claim(store, hold_id, "tr_late", unexpired_at=expires_at)
    assert claim(store, hold_id, "tr_in_time", unexpired_at=expires_at - timedelta(microseconds=1))
    assert store.hold(hold_id).action_id == "tr_in_time"
    assert not claim(store, hold_id, "tr_second")  # one action only


def test_beat_claims_an_expired_hold_without_a_moment(store, alice, bob):
    hold_id = active_hold(store, alice, bob, expires_in_seconds=60)
    store.advance(3600)
    assert claim(store, hold_id, "tr_expiry")


def test_a_pending_or_unknown_hold_cannot_be_claimed(store, alice, bob):
    pending = accepted(hold(store, alice, bob, 10))["id"]
    assert not claim(store, pending, "tr_a")
    assert not claim(store, "hold_none", "tr_a")


def test_due_holds_are_found_by_their_time_and_locked_ones_skipped(store, alice, bob):
    expiring = active_hold(store, alice, bob, expires_in_seconds=60)
    later = active_hold(store, alice, bob, expires_in_seconds=600)
    lasting = active_hold(store, alice, bob)
    store.advance(60)
    with store() as uow:
        [(due, what, api_key_id)] = uow.holds.due(now=store.now(), limit=10)
    assert (due.id, what, api_key_id) == (expiring, "expire", TEST_API_KEY_ID)
    store.advance(600)
    with store() as holder:
        first = holder.holds.due(now=store.now(), limit=1)
        assert [h.id for h, _, _ in first] == [min(expiring, later)]
        with store() as other:  # SKIP LOCKED: the other transaction takes the next
            assert [h.id for h, _, _ in other.holds.due(now=store.now(), limit=10)] == [
                max(expiring, later)
            ]
    assert lasting not in {h.id for h, _, _ in first}


def test_a_hold_with_an_action_is_no_longer_due(store, alice, bob):
    hold_id = active_hold(store, alice, bob, expires_in_seconds=60)
    assert claim(store, hold_id, "tr_void")
    store.advance(60)
    with store() as uow:
        assert uow.holds.due(now=store.now(), limit=10) == []


# --- movements, legs, entries ---------------------------------------------------------------


def test_keyless_members_are_stored_after_their_movement_and_never_conflict(store, alice, bob):
    head = movement(id="pay_1", kind="payment", legs=(Leg(alice, -5), Leg(bob, 5)))
    members = [
        movement(id=f"hold_{i}", kind="hold", source_account_id=alice, destination_account_id=bob)
        for i in range(2)
    ]
    with store() as uow:
        stored = uow.transfers.add_pending(
            [PendingWrite(m, TEST_API_KEY_ID, None, None) for m in members]
            + [PendingWrite(head, TEST_API_KEY_ID, "k", "h")]
        )
        uow.commit()
    assert set(stored) == {"pay_1", "hold_0", "hold_1"}
    assert [t.id for t in store.state.by_seq()][-3:] == ["pay_1", "hold_0", "hold_1"]
    assert store.state.legs["pay_1"] == (Leg(alice, -5), Leg(bob, 5))


@pytest.mark.parametrize(
    ("changes", "constraint"),
    [
        ({"source_account_id": "x"}, "accounts_or_legs"),
        ({"kind": "transfer"}, "accounts_or_legs"),
        ({"kind": "reversal"}, "reversal_names_original"),
        ({"kind": "reversal", "reverses_id": "tr_o", "reversal_amount": 0}, "reversal_names"),
        ({"kind": "capture", "source_account_id": "a", "destination_account_id": "b"}, "hold"),
        ({"hold_id": "hold_1"}, "action_names_hold"),
    ],
)
def test_a_movement_the_schema_refuses_is_refused(store, alice, bob, changes, constraint):
    accounts = {"x": alice, "a": alice, "b": bob}
    for side in ("source_account_id", "destination_account_id"):
        if side in changes:
            changes[side] = accounts[changes[side]]
    with pytest.raises(FakeIntegrityError, match=constraint):
        store_one(store, movement(legs=(Leg(alice, -5), Leg(bob, 5)), **changes))


def test_a_leg_of_nothing_is_refused(store, alice, bob):
    with pytest.raises(FakeIntegrityError, match="amount_nonzero"):
        store_one(store, movement(legs=(Leg(alice, 0), Leg(bob, 5))))


def test_entries_are_one_per_leg_and_balance_per_currency(store, alice, bob):
    store_one(store, movement(legs=(Leg(alice, -5), Leg(alice, 2), Leg(bob, 3))))
    twice = Posted("tr_x", (Entry("tr_x", alice, -5, 95, 0), Entry("tr_x", alice, 2, 97, 0)))
    with store() as uow, pytest.raises(FakeIntegrityError, match="uq_entries_transfer_id_leg"):
        uow.entries.add_posted([twice])
    short = Posted("tr_x", (Entry("tr_x", alice, -5, 95, 0), Entry("tr_x", bob, 4, 4, 1)))
    with store() as uow, pytest.raises(FakeIntegrityError, match="entries_refer_and_balance"):
        uow.entries.add_posted([short])
    # An account may have two legs of one movement: two entries, one per leg.
    legs = (Entry("tr_x", alice, 2, 102, 1), Entry("tr_x", bob, 3, 3, 2))
    with store() as uow:
        uow.entries.add_posted([Posted("tr_x", (Entry("tr_x", alice, -5, 95, 0), *legs))])
        uow.commit()
    assert len([e for e in store.state.entries if e.transfer_id == "tr_x"]) == 3


# --- balances with holds, payments ----------------------------------------------------------


def test_a_balance_and_its_holds_are_written_together(store, alice, bob):
    hold_id = active_hold(store, alice, bob)
    assert store.held(alice) == (10, 0) and hold_id
    # Alone, the captured balance would break no_overdraft against the old held_out.
    with store() as uow, pytest.raises(FakeIntegrityError, match="no_overdraft"):
        uow.accounts.set_balances({alice: 5})
    store.set_balance(alice, 10)
    with store() as uow:
        uow.accounts.set_balances({alice: 0}, {alice: (0, 0)})
        uow.commit()
    assert (store.balance(alice), store.held(alice)) == (0, (0, 0))


def test_a_cashback_above_its_share_is_refused(store, alice, bob):
    store_one(store, movement(id="pay_1", kind="payment", legs=(Leg(alice, -99), Leg(bob, 99))))
    payment = NewPayment("pay_1", alice, bob, 99, bob, 100, 1, None)  # 0.99 of share: 0
    with store() as uow, pytest.raises(FakeIntegrityError, match="cashback_rounded_down"):
        uow.payments.add(payment)
