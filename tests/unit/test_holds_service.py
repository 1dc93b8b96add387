"""Holds reserve funds without moving them; one capture (of all or part) or one void or
expiry settles each, claimed before it is stored, so a capture after a void, after the
expiry (even one beat has not processed yet) or beyond the amount held is refused; and the
posting leaves balances, held amounts and hold statuses that reconcile."""

from __future__ import annotations

import pytest
from fakes import FakeIdempotencyCache, FakeStore
from hypothesis import given, settings
from hypothesis import strategies as st
from movement_scenario import (
    accepted,
    act,
    broken_rules,
    capture,
    expire_due,
    failed,
    hold,
    post_all,
    void,
)
from scenario import fund, new_account, transfer

from ledger_core.domain.model import TransferKind
from ledger_core.service_layer import accounts, posting, reads
from ledger_core.service_layer.errors import Failure, Response, StorageRefusedError
from ledger_core.service_layer.posting import PostingOptions


@pytest.fixture
def alice(store: FakeStore) -> str:
    account_id = new_account(store)
    fund(store, account_id, 100)
    return account_id


@pytest.fixture
def bob(store: FakeStore) -> str:
    return new_account(store)


@pytest.fixture
def held(store: FakeStore, alice: str, bob: str) -> str:
    """An active hold of 60 of alice's 100 for bob, with no expiry."""
    hold_id = accepted(hold(store, alice, bob, 60))["id"]
    post_all(store)
    assert store.hold(hold_id).status == "active"
    return hold_id


def hold_json(store: FakeStore, hold_id: str) -> dict:
    body = reads.get_hold(store, hold_id)
    assert isinstance(body, dict), body
    return body


def balance(store: FakeStore, account_id: str) -> dict:
    body = accounts.get_account(store, account_id)
    assert isinstance(body, dict), body
    return body["balance"]


def refusal(result: Response | Failure) -> tuple[str, str]:
    assert isinstance(result, Failure), result
    return result.code, result.detail


def actions_stored(store: FakeStore) -> list[str]:
    return [t.id for t in store.state.by_seq() if t.hold_id is not None]


# --- reserving ------------------------------------------------------------------------------


def test_a_hold_reserves_funds_and_moves_nothing(store, alice, bob):
    body = accepted(hold(store, alice, bob, 60))
    assert (body["object"], body["status"], body["action_id"]) == ("hold", "pending", None)
    post_all(store)
    assert hold_json(store, body["id"])["status"] == "active"
    assert (store.balance(alice), store.balance(bob)) == (100, 0)
    assert (store.held(alice), store.held(bob)) == ((60, 0), (0, 60))
    assert balance(store, alice) == {"posted": 100, "pending": -60, "available": 40}
    assert balance(store, bob) == {"posted": 0, "pending": 60, "available": 0}
    # Its movement posted no entry.
    hold_movement = reads.get_transaction(store, body["id"])
    assert isinstance(hold_movement, dict) and hold_movement["entries"] == []
    assert broken_rules(store) == {}


def test_held_funds_cannot_be_spent(store, alice, bob, held):
    too_much = transfer(store, alice, bob, 41)
    enough = transfer(store, alice, bob, 40)
    post_all(store)
    assert store.statuses([too_much, enough]) == ["rejected", "posted"]
    assert store.balance(alice) == 60
    assert broken_rules(store) == {}


def test_a_hold_beyond_the_available_funds_is_rejected(store, alice, bob, held):
    second = accepted(hold(store, alice, bob, 41))["id"]
    post_all(store)
    assert store.status(second) == "rejected"
    assert hold_json(store, second)["status"] == "rejected"
    assert store.held(alice) == (60, 0)
    assert broken_rules(store) == {}


# --- capturing and voiding ------------------------------------------------------------------


def test_a_full_capture_moves_the_amount_held_and_releases_the_hold(store, alice, bob, held):
    action = accepted(capture(store, held))
    assert (action["kind"], action["hold_id"], action["amount"]) == ("capture", held, 60)
    assert hold_json(store, held)["action_id"] == action["id"]
    post_all(store)
    assert (store.balance(alice), store.balance(bob)) == (40, 60)
    assert (store.held(alice), store.held(bob)) == ((0, 0), (0, 0))
    captured = hold_json(store, held)
    assert (captured["status"], captured["captured_amount"]) == ("captured", 60)
    assert broken_rules(store) == {}


def test_a_partial_capture_moves_part_and_releases_the_rest(store, alice, bob, held):
    accepted(capture(store, held, 25))
    post_all(store)
    assert (store.balance(alice), store.balance(bob)) == (75, 25)
    assert (store.held(alice), store.held(bob)) == ((0, 0), (0, 0))
    captured = hold_json(store, held)
    assert (captured["status"], captured["captured_amount"]) == ("captured", 25)
    assert balance(store, alice)["available"] == 75
    assert failed(capture(store, held, 1)) == "hold_not_active"
    assert broken_rules(store) == {}


@pytest.mark.parametrize("amount", [0, 61])
def test_a_capture_outside_the_amount_held_is_refused(store, held, amount):
    assert failed(capture(store, held, amount)) == "capture_exceeds_hold"
    assert actions_stored(store) == []
    assert store.hold(held).action_id is None


def test_a_void_releases_the_funds_and_moves_nothing(store, alice, bob, held):
    action = accepted(void(store, held))
    post_all(store)
    assert hold_json(store, held)["status"] == "voided"
    assert (store.balance(alice), store.balance(bob)) == (100, 0)
    assert store.held(alice) == (0, 0)
    void_movement = reads.get_transaction(store, action["id"])
    assert isinstance(void_movement, dict)
    assert (void_movement["status"], void_movement["entries"]) == ("posted", [])
    assert broken_rules(store) == {}


def test_a_capture_after_a_void_is_refused(store, held):
    accepted(void(store, held))
    post_all(store)
    assert refusal(capture(store, held)) == ("hold_not_active", "The hold is voided.")
    assert len(actions_stored(store)) == 1


def test_a_capture_after_a_void_accepted_but_not_posted_is_refused(store, held):
    accepted(void(store, held))
    code, detail = refusal(capture(store, held))
    assert code == "hold_not_active"
    assert "Another capture or void" in detail
    post_all(store)
    assert store.hold(held).status == "voided"


def test_a_hold_not_yet_posted_cannot_be_captured(store, alice, bob):
    hold_id = accepted(hold(store, alice, bob, 10))["id"]
    assert refusal(capture(store, hold_id)) == ("hold_not_active", "The hold is pending.")


def test_an_unknown_hold_is_not_found(store):
    assert failed(capture(store, "hold_none")) == "hold_not_found"


def test_a_capture_replayed_with_its_key_is_stored_once(store, held):
    first = act(store, held, TransferKind.CAPTURE, 10, key="cap-1")
    again = act(store, held, TransferKind.CAPTURE, 10, key="cap-1")
    assert isinstance(first, Response) and isinstance(again, Response)
    assert again.replayed and again.body == first.body
    assert len(actions_stored(store)) == 1
    reused = act(store, held, TransferKind.CAPTURE, 11, key="cap-1", cache=FakeIdempotencyCache())
    assert failed(reused) == "idempotency_key_reused"


def test_a_capture_an_operator_rejects_gives_the_hold_back_to_other_actions(store, held):
    action = accepted(capture(store, held))["id"]
    store.poisoned[action] = StorageRefusedError("corrupt row")  # fails whatever batch
    twice = PostingOptions(attempts_max=2, retry_delays_seconds=(1.0,))
    for _ in range(2):
        posting.post_claimed(store, shard=0, limit=10, options=twice)
        store.advance(5)
    assert posting.reject_quarantined(store, action) == [action]
    assert store.status(action) == "rejected"
    # As when posting rejects a capture: the hold is active again, for a void or expiry.
    assert store.hold(held).action_id is None
    accepted(void(store, held))


def test_a_refused_action_stores_nothing_and_leaves_the_hold_to_the_next(store, held):
    accepted(void(store, held))
    assert failed(capture(store, held)) == "hold_not_active"
    post_all(store)
    assert [store.transfer(i).kind for i in actions_stored(store)] == ["void"]


# --- expiry ---------------------------------------------------------------------------------


@pytest.fixture
def expiring(store: FakeStore, alice: str, bob: str) -> str:
    """An active hold of 60 of alice's that expires in a minute."""
    hold_id = accepted(hold(store, alice, bob, 60, expires_in_seconds=60))["id"]
    post_all(store)
    assert hold_json(store, hold_id)["status"] == "active"
    return hold_id


def test_a_hold_is_captured_up_to_its_expiry(store, alice, bob, expiring):
    store.advance(59)
    accepted(capture(store, expiring))
    post_all(store)
    assert (store.balance(alice), store.balance(bob)) == (40, 60)


@pytest.mark.parametrize("seconds", [60, 61, 3600])
def test_a_hold_past_its_expiry_is_not_captured_even_before_beat(store, expiring, seconds):
    store.advance(seconds)
    code, detail = refusal(capture(store, expiring))
    assert (code, detail) == ("hold_not_active", "The hold is past its expiry.")
    # Beat has not run: the hold is still active, with no action, and nothing stored.
    assert (store.hold(expiring).status, store.hold(expiring).action_id) == ("active", None)
    assert actions_stored(store) == []


def test_beat_expires_due_holds_once_and_frees_their_funds(store, alice, bob, expiring):
    lasting = accepted(hold(store, alice, bob, 40))["id"]
    post_all(store)
    store.advance(59)
    assert expire_due(store) == 0
    store.advance(1)
    assert expire_due(store) == 1
    assert expire_due(store) == 0  # its one action is claimed already
    post_all(store)
    assert hold_json(store, expiring)["status"] == "expired"
    assert hold_json(store, lasting)["status"] == "active"  # no expiry: never due
    assert store.held(alice) == (40, 0)
    assert store.balance(alice) == 100
    expiry = store.transfer(store.hold(expiring).action_id or "")
    assert (expiry.kind, expiry.api_key_id) == ("expire", store.transfer(expiring).api_key_id)
    assert broken_rules(store) == {}


def test_an_expiry_claimed_by_beat_makes_a_capture_too_late(store, expiring):
    store.advance(60)
    assert expire_due(store) == 1
    store.advance(-30)  # a client whose clock says it is still in time
    assert failed(capture(store, expiring)) == "hold_not_active"


def test_a_capture_accepted_before_the_expiry_is_not_undone_by_beat(store, alice, bob, expiring):
    accepted(capture(store, expiring, 20))
    store.advance(120)
    assert expire_due(store) == 0
    post_all(store)
    assert hold_json(store, expiring)["status"] == "captured"
    assert (store.balance(alice), store.balance(bob)) == (80, 20)


# --- properties -----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, database=None)
@given(
    funds=st.integers(1, 10**6),
    held_part=st.floats(0.0, 1.0),
    captured_part=st.floats(0.0, 1.0),
)
def test_any_capture_within_a_hold_moves_exactly_it_and_releases_everything(
    funds, held_part, captured_part
):
    store = FakeStore()
    source, destination = new_account(store), new_account(store)
    fund(store, source, funds)
    amount = max(1, int(funds * held_part))
    captured = max(1, int(amount * captured_part))
    hold_id = accepted(hold(store, source, destination, amount))["id"]
    post_all(store)
    assert store.held(source) == (amount, 0)
    accepted(capture(store, hold_id, captured))
    post_all(store)
    assert (store.balance(source), store.balance(destination)) == (funds - captured, captured)
    assert (store.held(source), store.held(destination)) == ((0, 0), (0, 0))
    assert store.hold(hold_id).captured_amount == captured
    assert broken_rules(store) == {}
