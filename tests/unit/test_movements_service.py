"""Transactions, payments and reversals are accepted only when their rules allow, once per
Idempotency-Key, and post through the same posting path as transfers: every leg or none,
cashback with its payment or after its delay, reversals never beyond their original; and
the books they leave balance."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from fakes import FakeIdempotencyCache, FakeStore
from movement_scenario import (
    accepted,
    broken_rules,
    capture,
    expire_due,
    failed,
    hold,
    payment,
    post_all,
    reverse,
    transaction,
    void,
)
from scenario import fund, new_account, transfer

from ledger_core.domain import limits
from ledger_core.service_layer import accounts, movements, reads
from ledger_core.service_layer.errors import Failure, Response
from ledger_core.service_layer.movements import CashbackRequest


@pytest.fixture
def alice(store: FakeStore) -> str:
    return new_account(store)


@pytest.fixture
def bob(store: FakeStore) -> str:
    return new_account(store)


@pytest.fixture
def carol(store: FakeStore) -> str:
    return new_account(store)


def movement(store: FakeStore, movement_id: str) -> dict:
    body = reads.get_transaction(store, movement_id)
    assert isinstance(body, dict), body
    return body


def balance(store: FakeStore, account_id: str) -> dict:
    body = accounts.get_account(store, account_id)
    assert isinstance(body, dict), body
    return body["balance"]


def payment_json(store: FakeStore, payment_id: str) -> dict:
    body = reads.get_payment(store, payment_id)
    assert isinstance(body, dict), body
    return body


def kinds_stored(store: FakeStore, kind: str) -> list[str]:
    return [t.id for t in store.state.by_seq() if t.kind == kind]


# --- transactions ---------------------------------------------------------------------------


def test_a_balanced_transaction_posts_every_leg_with_its_balance(store, alice, bob, carol):
    fund(store, alice, 100)
    body = accepted(transaction(store, [(alice, -70), (bob, 50), (carol, 20)]))
    assert (body["status"], body["amount"], body["currency"]) == ("pending", 70, "USD")
    assert [e["balance_after"] for e in body["entries"]] == [None, None, None]

    assert post_all(store) == 1
    posted = movement(store, body["id"])
    assert posted["status"] == "posted"
    # In leg order, each with the balance it left.
    assert [(e["account_id"], e["amount"], e["balance_after"]) for e in posted["entries"]] == [
        (alice, -70, 30),
        (bob, 50, 50),
        (carol, 20, 20),
    ]
    assert [store.balance(a) for a in (alice, bob, carol)] == [30, 50, 20]
    assert broken_rules(store) == {}


def test_a_transaction_may_move_two_currencies_each_balanced(store, alice, bob):
    euro_a, euro_b = new_account(store, "EUR"), new_account(store, "EUR")
    fund(store, alice, 10)
    fund(store, euro_a, 5)
    body = accepted(transaction(store, [(alice, -10), (bob, 10), (euro_a, -5), (euro_b, 5)]))
    assert body["currency"] is None
    post_all(store)
    assert [store.balance(a) for a in (alice, bob, euro_a, euro_b)] == [0, 10, 0, 5]
    assert broken_rules(store) == {}


def test_an_unbalanced_transaction_is_refused_and_stores_nothing(store, alice, bob):
    fund(store, alice, 100)
    result = transaction(store, [(alice, -70), (bob, 69)])
    assert failed(result) == "unbalanced"
    assert kinds_stored(store, "transaction") == []


def test_a_transaction_balanced_only_across_currencies_is_unbalanced(store, alice):
    euro = new_account(store, "EUR")
    assert failed(transaction(store, [(alice, -5), (euro, 5)])) == "unbalanced"


def test_a_transaction_naming_an_unknown_account_is_refused(store, alice):
    assert failed(transaction(store, [(alice, -5), ("acc_nobody", 5)])) == "account_not_found"
    assert kinds_stored(store, "transaction") == []


@pytest.mark.parametrize("count", [1, limits.transaction_entries_max + 1])
def test_too_few_or_too_many_entries_are_refused(store, alice, bob, count):
    legs = [(alice, -(count - 1) or -1)] + [(bob, 1)] * (count - 1)
    assert failed(transaction(store, legs)) == "too_many_entries"


def test_the_most_entries_allowed_post(store, alice, bob, carol):
    count = limits.transaction_entries_max
    fund(store, alice, count)
    legs = [(alice, -(count - 1))] + [(bob if i % 2 else carol, 1) for i in range(count - 1)]
    body = accepted(transaction(store, legs))
    post_all(store)
    assert len(movement(store, body["id"])["entries"]) == count
    assert store.balance(alice) == 1
    assert broken_rules(store) == {}


def test_a_transaction_without_the_funds_is_rejected_whole(store, alice, bob, carol):
    fund(store, alice, 10)
    body = accepted(transaction(store, [(alice, -20), (bob, 15), (carol, 5)]))
    post_all(store)
    rejected = movement(store, body["id"])
    assert (rejected["status"], rejected["rejection_reason"]) == ("rejected", "insufficient_funds")
    assert rejected["rejected_account_id"] == alice
    assert [store.balance(a) for a in (alice, bob, carol)] == [10, 0, 0]
    assert broken_rules(store) == {}


def test_a_pending_transaction_shows_in_the_balances_of_its_legs(store, alice, bob):
    fund(store, alice, 100)
    accepted(transaction(store, [(alice, -40), (bob, 40)]))
    assert balance(store, alice) == {"posted": 100, "pending": -40, "available": 60}
    assert balance(store, bob) == {"posted": 0, "pending": 40, "available": 0}
    post_all(store)
    assert balance(store, alice) == {"posted": 60, "pending": 0, "available": 60}
    assert balance(store, bob) == {"posted": 40, "pending": 0, "available": 40}


def test_a_replay_with_the_same_key_answers_what_the_first_request_did(store, alice, bob):
    fund(store, alice, 100)
    legs = [(alice, -40), (bob, 40)]
    first = accepted(transaction(store, legs, key="k-replay"))
    post_all(store)
    # Redis forgot: PostgreSQL answers, with the movement as it was accepted.
    again = transaction(store, legs, key="k-replay")
    assert isinstance(again, Response) and again.replayed
    assert again.body == first
    assert kinds_stored(store, "transaction") == [first["id"]]
    assert store.balance(bob) == 40


def test_a_replay_is_answered_from_the_cache_without_the_database(store, alice, bob):
    cache = FakeIdempotencyCache()
    legs = [(alice, -40), (bob, 40)]
    first = accepted(transaction(store, legs, key="k-cached", cache=cache))
    opened = store.opened
    again = transaction(store, legs, key="k-cached", cache=cache)
    assert isinstance(again, Response) and again.replayed and again.body == first
    assert store.opened == opened


@pytest.mark.parametrize("cached", [False, True])
def test_the_same_key_with_another_body_is_refused(store, alice, bob, cached):
    cache = FakeIdempotencyCache()
    accepted(transaction(store, [(alice, -40), (bob, 40)], key="k-reused", cache=cache))
    other = transaction(
        store, [(alice, -41), (bob, 41)], key="k-reused", cache=cache if cached else None
    )
    assert failed(other) == "idempotency_key_reused"
    assert len(kinds_stored(store, "transaction")) == 1


# --- payments -------------------------------------------------------------------------------


@pytest.fixture
def shop(store: FakeStore) -> tuple[str, str, str]:
    """A customer with 1000, a merchant, and a rewards account with 100."""
    customer, merchant, rewards = new_account(store), new_account(store), new_account(store)
    fund(store, customer, 1000)
    fund(store, rewards, 100)
    return customer, merchant, rewards


def test_an_immediate_cashback_posts_with_its_payment(store, shop):
    customer, merchant, rewards = shop
    # 999 * 1.5% = 14.985: rounded down.
    body = accepted(payment(store, customer, merchant, 999, CashbackRequest(rewards, 150)))
    assert body["cashback"] == {
        "rewards_account_id": rewards,
        "basis_points": 150,
        "amount": 14,
        "hold_id": None,
        "status": "pending",
    }
    post_all(store)
    assert [store.balance(a) for a in shop] == [1000 - 999 + 14, 999, 100 - 14]
    posted = payment_json(store, body["id"])
    assert (posted["status"], posted["cashback"]["status"]) == ("posted", "posted")
    assert len(movement(store, body["id"])["entries"]) == 4
    assert broken_rules(store) == {}


def test_a_payment_without_cashback_moves_the_amount_only(store, shop):
    customer, merchant, _ = shop
    body = accepted(payment(store, customer, merchant, 250))
    assert body["cashback"] is None
    post_all(store)
    assert [store.balance(a) for a in shop] == [750, 250, 100]


def test_a_payment_without_the_funds_rejects_its_cashback_too(store, shop):
    customer, merchant, rewards = shop
    # 1100 less its cashback of 55 is still more than the customer's 1000.
    body = accepted(payment(store, customer, merchant, 1100, CashbackRequest(rewards, 500)))
    post_all(store)
    rejected = payment_json(store, body["id"])
    assert (rejected["status"], rejected["rejection_reason"]) == ("rejected", "insufficient_funds")
    assert rejected["cashback"]["status"] == "rejected"
    assert [store.balance(a) for a in shop] == [1000, 0, 100]


def test_a_delayed_cashback_is_accepted_as_a_hold_grouped_with_its_payment(store, shop):
    customer, merchant, rewards = shop
    cashback = CashbackRequest(rewards, 200, available_after_seconds=3600)
    body = accepted(payment(store, customer, merchant, 500, cashback))
    assert (body["cashback"]["amount"], body["cashback"]["status"]) == (10, "pending")
    hold_id = body["cashback"]["hold_id"]
    assert hold_id is not None
    held = store.hold(hold_id)
    assert (held.source_account_id, held.destination_account_id) == (rewards, customer)
    assert (held.amount, held.status, held.expires_at) == (10, "pending", None)
    assert held.capture_at == store.now() + timedelta(seconds=3600)
    # One atomic unit, the payment at its head: both post, or neither.
    head, member = store.transfer(body["id"]), store.transfer(hold_id)
    assert head.group_id == member.group_id == body["id"]
    assert head.seq < member.seq
    # Without the delayed cashback's legs: only the payment's pair.
    assert [e["amount"] for e in movement(store, body["id"])["entries"]] == [-500, 500]


def test_a_delayed_cashback_is_held_then_paid_by_beat(store, shop):
    customer, merchant, rewards = shop
    cashback = CashbackRequest(rewards, 200, available_after_seconds=3600)
    body = accepted(payment(store, customer, merchant, 500, cashback))
    hold_id = body["cashback"]["hold_id"]
    post_all(store)
    assert [store.balance(a) for a in shop] == [500, 500, 100]
    assert store.held(rewards) == (10, 0) and store.held(customer) == (0, 10)
    assert payment_json(store, body["id"])["cashback"]["status"] == "pending"
    store.advance(3600)
    assert expire_due(store) == 1
    post_all(store)
    assert [store.balance(a) for a in shop] == [510, 500, 90]
    assert store.hold(hold_id).status == "captured"
    assert payment_json(store, body["id"])["cashback"]["status"] == "posted"
    assert broken_rules(store) == {}


def test_a_payment_refunded_before_its_delayed_cashback_pays_no_cashback(store, shop):
    customer, merchant, rewards = shop
    cashback = CashbackRequest(rewards, 200, available_after_seconds=3600)
    body = accepted(payment(store, customer, merchant, 500, cashback))
    post_all(store)
    accepted(reverse(store, body["id"]))
    post_all(store)
    store.advance(3600)
    expire_due(store)
    post_all(store)
    # Nothing bought, nothing earned.
    assert [store.balance(a) for a in shop] == [1000, 0, 100]


def test_refunds_that_add_up_while_pending_still_void_the_delayed_cashback(store, shop):
    # The second refund is accepted before the first posts: it takes the rest all the same.
    customer, merchant, rewards = shop
    cashback = CashbackRequest(rewards, 200, available_after_seconds=3600)
    body = accepted(payment(store, customer, merchant, 500, cashback))
    post_all(store)
    accepted(reverse(store, body["id"], 200))
    accepted(reverse(store, body["id"], 300))
    post_all(store)
    store.advance(3600)
    expire_due(store)
    post_all(store)
    assert [store.balance(a) for a in shop] == [1000, 0, 100]
    assert payment_json(store, body["id"])["reversed_amount"] == 500
    assert broken_rules(store) == {}


def test_a_pending_payment_is_refused_without_locking_its_hold_or_itself(store, shop):
    # Its posting holds the payment's row, then takes the hold: locking them the other
    # way round here would deadlock against it.
    customer, merchant, rewards = shop
    cashback = CashbackRequest(rewards, 200, available_after_seconds=3600)
    body = accepted(payment(store, customer, merchant, 500, cashback))
    store.calls.clear()
    assert failed(reverse(store, body["id"])) == "not_reversible"
    assert "holds.lock" not in store.calls
    assert "transfers.lock_originals" not in store.calls


def test_a_delayed_cashback_is_neither_captured_nor_voided_by_hand(store, shop):
    customer, merchant, rewards = shop
    cashback = CashbackRequest(rewards, 200, available_after_seconds=3600)
    body = accepted(payment(store, customer, merchant, 500, cashback))
    post_all(store)
    hold_id = payment_json(store, body["id"])["cashback"]["hold_id"]
    assert failed(capture(store, hold_id)) == "hold_is_cashback"
    assert failed(void(store, hold_id)) == "hold_is_cashback"
    assert store.hold(hold_id).status == "active"
    store.advance(3600)
    expire_due(store)
    post_all(store)
    assert store.hold(hold_id).status == "captured"


@pytest.mark.parametrize(
    "cashback",
    [
        CashbackRequest("", -100),
        CashbackRequest("", limits.basis_points_per_unit + 1),
        CashbackRequest("", 100, available_after_seconds=-60),
    ],
)
def test_a_cashback_out_of_bounds_is_refused_by_the_core_and_stores_nothing(store, shop, cashback):
    customer, merchant, rewards = shop
    cashback = replace(cashback, rewards_account_id=rewards)
    assert failed(payment(store, customer, merchant, 100, cashback)) == "validation_error"
    assert kinds_stored(store, "payment") == []


def test_a_hold_expiring_in_the_past_is_refused_by_the_core(store, alice, bob):
    fund(store, alice, 10)
    assert failed(hold(store, alice, bob, 5, expires_in_seconds=-1)) == "validation_error"
    assert kinds_stored(store, "hold") == []


def test_cashback_from_the_customers_own_account_is_refused(store, shop):
    customer, merchant, _ = shop
    result = payment(store, customer, merchant, 100, CashbackRequest(customer, 100))
    assert failed(result) == "same_account"


def test_a_payment_replay_answers_the_first_body(store, shop):
    customer, merchant, rewards = shop
    cashback = CashbackRequest(rewards, 100)
    first = accepted(payment(store, customer, merchant, 300, cashback, key="p"))
    post_all(store)
    again = payment(store, customer, merchant, 300, cashback, key="p")
    assert isinstance(again, Response) and again.replayed and again.body == first
    assert kinds_stored(store, "payment") == [first["id"]]


# --- reversals ------------------------------------------------------------------------------


@pytest.fixture
def paid(store: FakeStore, alice: str, bob: str) -> str:
    """A posted transfer of 100 from alice to bob."""
    fund(store, alice, 100)
    transfer_id = transfer(store, alice, bob, 100)
    post_all(store)
    return transfer_id


def test_a_transfer_is_reversed_in_part_then_in_whole_and_no_further(store, alice, bob, paid):
    first = accepted(reverse(store, paid, 30))
    assert [(e["account_id"], e["amount"]) for e in first["entries"]] == [(alice, 30), (bob, -30)]
    assert first["reverses_id"] == paid
    post_all(store)
    assert (store.balance(alice), store.balance(bob)) == (30, 70)
    assert movement(store, paid)["reversed_amount"] == 30

    rest = accepted(reverse(store, paid))  # what is left: 70
    assert rest["amount"] == 70
    post_all(store)
    assert (store.balance(alice), store.balance(bob)) == (100, 0)
    original = movement(store, paid)
    assert original["reversed_amount"] == 100
    assert original["reversed_by_ids"] == sorted([first["id"], rest["id"]])

    more = reverse(store, paid, 1)
    assert failed(more) == "reversal_exceeds_original"
    assert isinstance(more, Failure) and more.extra == {"reversible_amount": 0}
    assert broken_rules(store) == {}


@pytest.mark.parametrize("amount", [0, 101])
def test_a_reversal_outside_what_is_left_is_refused(store, paid, amount):
    result = reverse(store, paid, amount)
    assert failed(result) == "reversal_exceeds_original"
    assert isinstance(result, Failure) and result.extra == {"reversible_amount": 100}
    assert kinds_stored(store, "reversal") == []


def test_what_is_not_posted_is_not_reversible(store, alice, bob):
    fund(store, alice, 10)
    pending = transfer(store, alice, bob, 5)
    assert failed(reverse(store, pending)) == "not_reversible"
    too_much = transfer(store, alice, bob, 50)
    post_all(store)
    assert store.status(too_much) == "rejected"
    assert failed(reverse(store, too_much)) == "not_reversible"


def test_a_hold_is_not_reversible_even_posted(store, alice, bob):
    fund(store, alice, 10)
    hold_id = accepted(hold(store, alice, bob, 5))["id"]
    post_all(store)
    assert store.status(hold_id) == "posted"
    assert failed(reverse(store, hold_id)) == "not_reversible"


def test_an_unknown_movement_is_not_found(store):
    assert failed(reverse(store, "tr_nothing")) == "transaction_not_found"


def test_a_reverse_route_reverses_only_the_movements_its_resource_names(store, shop, paid):
    customer, merchant, _ = shop
    fund(store, customer, 100)
    payment_id = accepted(payment(store, customer, merchant, 100))["id"]
    post_all(store)
    # A transfer through /v1/payments, a payment through /v1/transfers: not found there.
    assert failed(reverse(store, paid, of=movements.PAYMENT_ONLY)) == "payment_not_found"
    assert failed(reverse(store, payment_id, of=movements.SOURCE_TO_DESTINATION)) == (
        "transfer_not_found"
    )
    assert kinds_stored(store, "reversal") == []
    # Each through its own route, and any through /v1/transactions.
    accepted(reverse(store, paid, 10, of=movements.SOURCE_TO_DESTINATION))
    accepted(reverse(store, payment_id, 10, of=movements.PAYMENT_ONLY))
    accepted(reverse(store, paid, 10, of=movements.ANY_MOVEMENT))
    assert len(kinds_stored(store, "reversal")) == 3


def test_a_transaction_is_reversed_in_whole_only(store, alice, bob, carol):
    fund(store, alice, 100)
    original = accepted(transaction(store, [(alice, -70), (bob, 50), (carol, 20)]))["id"]
    post_all(store)
    assert failed(reverse(store, original, 35)) == "partial_reversal_not_allowed"
    whole = accepted(reverse(store, original))
    assert [e["amount"] for e in whole["entries"]] == [70, -50, -20]
    post_all(store)
    assert [store.balance(a) for a in (alice, bob, carol)] == [100, 0, 0]
    assert broken_rules(store) == {}


def test_a_pending_reversal_counts_against_what_is_left_to_reverse(store, paid):
    first = accepted(reverse(store, paid, 60))["id"]
    beyond = reverse(store, paid, 60)
    assert failed(beyond) == "reversal_exceeds_original"
    assert isinstance(beyond, Failure) and beyond.extra == {"reversible_amount": 40}
    rest = accepted(reverse(store, paid))
    assert rest["amount"] == 40
    post_all(store)
    assert store.statuses([first, rest["id"]]) == ["posted", "posted"]
    assert movement(store, paid)["reversed_amount"] == 100
    assert broken_rules(store) == {}


def test_a_retried_reversal_replays_once_nothing_is_left_to_reverse(store, paid):
    # Each call has a fresh cache: as after the cached answer expired.
    first = accepted(reverse(store, paid, key="refund-all"))
    post_all(store)
    again = reverse(store, paid, key="refund-all")
    assert isinstance(again, Response) and again.replayed and again.body == first
    other = reverse(store, paid, 5, key="refund-all")
    assert failed(other) == "idempotency_key_reused"
    assert kinds_stored(store, "reversal") == [first["id"]]


def test_reversals_stored_past_the_accept_check_post_only_within_the_original(
    store, paid, monkeypatch
):
    # As if the accept check had not seen the other (a release before it counted pending
    # reversals): the posting re-checks under the original's lock.
    monkeypatch.setattr(
        movements, "_with_pending_reversals", lambda uow, original: (original, None)
    )
    first = accepted(reverse(store, paid, 60))["id"]
    second = accepted(reverse(store, paid, 60))["id"]
    post_all(store)
    assert store.statuses([first, second]) == ["posted", "rejected"]
    assert store.transfer(second).rejection_reason == "reversal_exceeds_original"
    assert movement(store, paid)["reversed_amount"] == 60
    assert broken_rules(store) == {}


def test_a_payment_refunded_in_part_takes_back_its_cashback_in_proportion(store, shop):
    customer, merchant, rewards = shop
    paid_id = accepted(payment(store, customer, merchant, 1000, CashbackRequest(rewards, 100)))
    post_all(store)
    assert [store.balance(a) for a in shop] == [10, 1000, 90]
    refund = accepted(reverse(store, paid_id["id"], 500))
    assert sorted((e["account_id"], e["amount"]) for e in refund["entries"]) == sorted(
        [(customer, 500), (merchant, -500), (rewards, 5), (customer, -5)]
    )
    post_all(store)
    assert [store.balance(a) for a in shop] == [505, 500, 95]
    assert payment_json(store, paid_id["id"])["reversed_amount"] == 500
    assert broken_rules(store) == {}


# --- reads ----------------------------------------------------------------------------------


def test_movements_are_listed_by_id_page_by_page(store, alice, bob):
    fund(store, alice, 100)
    transfer(store, alice, bob, 10)
    accepted(transaction(store, [(alice, -5), (bob, 5)]))
    every = sorted(store.state.transfers)
    seen: list[str] = []
    cursor = None
    for _ in range(len(every)):
        page = reads.list_transactions(store, cursor=cursor, limit=2)
        assert not isinstance(page, Failure), page
        seen += [item["id"] for item in page.data]
        assert all(item["object"] == "transaction" for item in page.data)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == every
    assert failed_read(reads.list_transactions(store, cursor="nonsense", limit=2))


def failed_read(result: object) -> bool:
    return isinstance(result, Failure) and result.code == "invalid_cursor"


def test_missing_movements_holds_and_payments_are_not_found(store):
    for result, code in [
        (reads.get_transaction(store, "tr_none"), "transaction_not_found"),
        (reads.get_hold(store, "hold_none"), "hold_not_found"),
        (reads.get_payment(store, "pay_none"), "payment_not_found"),
        (reads.account_as_of(store, "acc_none", store.now()), "account_not_found"),
    ]:
        assert isinstance(result, Failure) and result.code == code


def test_a_balance_as_of_a_moment_is_that_of_its_last_entry_then(store, alice, bob):
    funded_at = store.now()
    fund(store, alice, 100)
    store.advance(10)
    moved_at = store.now()
    transfer(store, alice, bob, 30)
    post_all(store)

    def posted_at(moment):
        body = reads.account_as_of(store, alice, moment)
        assert isinstance(body, dict), body
        assert body["balance"]["pending"] is None and body["balance"]["available"] is None
        return body["balance"]["posted"]

    assert posted_at(funded_at - timedelta(microseconds=1)) == 0
    assert posted_at(funded_at) == 100
    assert posted_at(moved_at - timedelta(microseconds=1)) == 100
    assert posted_at(moved_at) == 70
    assert posted_at(moved_at + timedelta(days=1)) == 70


def test_entries_are_listed_within_a_time_window(store, alice, bob):
    fund(store, alice, 100)
    funded_at = store.now()
    store.advance(10)
    transfer(store, alice, bob, 30)
    post_all(store)

    def amounts(**window):
        page = accounts.list_entries(store, alice, cursor=None, limit=10, **window)
        assert not isinstance(page, Failure), page
        return [item["amount"] for item in page.data]

    assert amounts() == [100, -30]
    assert amounts(created_after=funded_at) == [-30]
    assert amounts(created_before=store.now()) == [100]
