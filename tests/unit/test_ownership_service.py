"""Every movement checks, before it stores anything, that its key may debit each account it
takes money from: a write key refused for another owner's account (or one without an owner)
gets `account_not_owned` naming it, nothing is stored and its Idempotency-Key stays free;
keys of one owner share its accounts; admin keys debit any; deposits credit anyone; and
only admin keys open accounts allowed to overdraw."""

from __future__ import annotations

import pytest
from fakes import TEST_API_KEY, FakeIdempotencyCache, FakeStore
from movement_scenario import accepted, act, hold, payment, post_all, reverse, transaction
from scenario import (
    DEPOSIT,
    TRANSFER,
    WITHDRAWAL,
    accept,
    accept_batch,
    accepted_id,
    fund,
    movement,
    new_account,
    open_account,
)

from ledger_core.domain.access import ApiKey, Scope
from ledger_core.domain.model import TransferKind
from ledger_core.service_layer.access import authenticate, create_api_key
from ledger_core.service_layer.errors import Failure, Response
from ledger_core.service_layer.movements import CashbackRequest


def key_of(store: FakeStore, owner: str, scope: Scope = Scope.WRITE) -> ApiKey:
    """A new key of `owner`, as the API would authenticate it."""
    _, secret = create_api_key(store, name=owner, scope=scope, owner=owner)
    found = authenticate(store, secret)
    assert found is not None
    return found


@pytest.fixture
def ann(store: FakeStore) -> ApiKey:
    return key_of(store, "ann")


@pytest.fixture
def ben(store: FakeStore) -> ApiKey:
    return key_of(store, "ben")


@pytest.fixture
def anns(store: FakeStore, ann: ApiKey) -> str:
    """An account ann's key opened, holding 100."""
    account_id = new_account(store, api_key=ann)
    fund(store, account_id, 100)
    return account_id


@pytest.fixture
def bens(store: FakeStore, ben: ApiKey) -> str:
    """An account ben's key opened, holding 100."""
    account_id = new_account(store, api_key=ben)
    fund(store, account_id, 100)
    return account_id


def refused(result: Response | Failure, account_id: str) -> Failure:
    assert isinstance(result, Failure), result
    assert result.code == "account_not_owned"
    assert result.extra["account_id"] == account_id
    assert account_id in result.detail
    return result


def stored(store: FakeStore) -> int:
    return len(store.state.transfers) + len(store.state.batches)


# --- accounts -------------------------------------------------------------------------------


def test_an_account_belongs_to_the_owner_of_the_key_that_opened_it(store, ann):
    account_id = new_account(store, api_key=ann)
    assert store.state.accounts[account_id].owner == "ann"
    with store() as uow:
        assert uow.accounts.facts([account_id])[account_id].owner == "ann"
    # System accounts belong to nobody.
    assert store.state.accounts[store.system_account_id("USD")].owner is None


def test_only_an_admin_key_opens_an_account_allowed_to_overdraw(store, ann):
    before = len(store.state.accounts)
    result = open_account(store, overdraft=True, api_key=ann, key="overdraft")
    assert isinstance(result, Failure)
    assert result.code == "forbidden"
    assert "admin" in result.detail
    assert len(store.state.accounts) == before
    assert store.state.idempotency == {}
    assert isinstance(open_account(store, overdraft=True, key="overdraft"), Response)


# --- two-account movements ------------------------------------------------------------------


def test_a_write_key_withdraws_and_transfers_from_its_owners_accounts(store, ann, anns, bens):
    accepted_id(accept(store, movement(WITHDRAWAL, anns, None, 10), api_key=ann))
    accepted_id(accept(store, movement(TRANSFER, anns, bens, 10), api_key=ann))


def test_a_write_key_may_not_take_money_from_another_owners_account(store, ann, anns, bens):
    cache = FakeIdempotencyCache()
    before = stored(store)
    for request in (movement(WITHDRAWAL, bens, None, 10), movement(TRANSFER, bens, anns, 10)):
        refused(accept(store, request, api_key=ann, key="k", cache=cache), bens)
    assert stored(store) == before
    assert cache.data == {}
    # The Idempotency-Key was not spent: the corrected request goes through with it.
    accepted_id(accept(store, movement(TRANSFER, anns, bens, 10), api_key=ann, key="k"))


def test_a_deposit_debits_only_the_system_account_so_any_write_key_may_make_one(store, ann, bens):
    accepted_id(accept(store, movement(DEPOSIT, None, bens, 10), api_key=ann))


def test_keys_of_one_owner_share_its_accounts(store, ann, anns):
    rotated = key_of(store, "ann")
    assert rotated.id != ann.id
    accepted_id(accept(store, movement(WITHDRAWAL, anns, None, 10), api_key=rotated))


def test_an_admin_key_debits_any_account(store, anns, bens):
    accepted_id(accept(store, movement(TRANSFER, anns, bens, 10), api_key=TEST_API_KEY))


def test_an_account_without_an_owner_is_debited_by_admin_keys_only(store, ann):
    new_account(store)  # the currency's system account, for the withdrawal
    store.insert_account("acc_before_owners")  # as migration 0008 leaves one: owner NULL
    request = movement(WITHDRAWAL, "acc_before_owners", None, 10)
    refused(accept(store, request, api_key=ann), "acc_before_owners")
    accepted_id(accept(store, request))


def test_the_other_rules_answer_first(store, ann, bens):
    result = accept(store, movement(TRANSFER, bens, "acc_nope", 10), api_key=ann)
    assert isinstance(result, Failure)
    assert result.code == "account_not_found"


# --- batches --------------------------------------------------------------------------------


def test_a_batch_with_one_item_debiting_another_owner_stores_nothing(store, ann, anns, bens):
    before = stored(store)
    items = [
        movement(DEPOSIT, None, bens, 5),
        movement(TRANSFER, anns, bens, 5),
        movement(WITHDRAWAL, bens, None, 5),
        movement(TRANSFER, bens, anns, 5),
    ]
    for atomic in (False, True):
        failure = refused(accept_batch(store, items, api_key=ann, key="b", atomic=atomic), bens)
        assert failure.extra["item_index"] == 2
        assert failure.detail.startswith("items[2]: ")
    assert stored(store) == before
    result = accept_batch(store, items[:2], api_key=ann, key="b")
    assert isinstance(result, Response) and result.status_code == 202


# --- transactions, payments, holds, reversals ----------------------------------------------


def test_a_transaction_is_refused_for_any_account_of_another_owner_it_debits(
    store, ann, anns, bens
):
    before = stored(store)
    legs = [(anns, -10), (bens, -5), (anns, 15)]
    refused(transaction(store, legs, api_key=ann, key="t"), bens)
    assert stored(store) == before
    # Crediting another owner's account is fine.
    accepted(transaction(store, [(anns, -10), (bens, 10)], api_key=ann, key="t"))


def test_a_payment_needs_the_customer_and_the_rewards_account(store, ann, ben, anns, bens):
    shop = new_account(store, api_key=ben)
    rewards = new_account(store, api_key=ben)
    fund(store, rewards, 100)
    before = stored(store)
    refused(payment(store, bens, shop, 50, api_key=ann), bens)
    # 10% cashback of 50: 5 from the rewards account, now or held until the delay passed.
    for delay in (None, 60):
        cashback = CashbackRequest(rewards, 1000, delay)
        refused(payment(store, anns, shop, 50, cashback, api_key=ann), rewards)
    assert stored(store) == before
    assert store.state.payments == {} and store.state.holds == {}
    # Paying a merchant of another owner is fine; so is their own rewards paying ben.
    accepted(payment(store, anns, shop, 50, api_key=ann))
    accepted(payment(store, bens, shop, 50, CashbackRequest(rewards, 1000, 60), api_key=ben))


def test_a_hold_is_refused_on_another_owners_source(store, ann, anns, bens):
    refused(hold(store, bens, anns, 10, api_key=ann), bens)
    assert store.state.holds == {}
    accepted(hold(store, anns, bens, 10, api_key=ann))


@pytest.mark.parametrize("kind", [TransferKind.CAPTURE, TransferKind.VOID])
@pytest.mark.parametrize("side", ["source", "destination"])
def test_a_hold_is_captured_or_voided_by_a_key_owning_either_side(store, ann, ben, kind, side):
    source = new_account(store, api_key=ann)
    fund(store, source, 100)
    destination = new_account(store, api_key=ben)
    hold_id = accepted(hold(store, source, destination, 60, api_key=ann))["id"]
    post_all(store)
    before = stored(store)
    refused(act(store, hold_id, kind, api_key=key_of(store, "cat")), source)
    assert stored(store) == before
    assert store.hold(hold_id).action_id is None, "a refused action claimed the hold"
    accepted(act(store, hold_id, kind, api_key=ann if side == "source" else ben))


def test_a_reversal_debits_what_the_original_credited(store, ann, ben, anns, bens):
    moved = accepted_id(accept(store, movement(TRANSFER, anns, bens, 30), api_key=ann))
    post_all(store)
    before = stored(store)
    # Taking the 30 back debits ben's account: ann's key may not, ben's may.
    refused(reverse(store, moved, 10, api_key=ann, key="r"), bens)
    assert stored(store) == before
    accepted(reverse(store, moved, 10, api_key=ben, key="r"))


def test_a_refund_of_a_payment_with_cashback_debits_the_merchant_not_the_refunded_customer(
    store, ann, ben, anns
):
    # The refund takes back the customer's 10 of cashback while giving it 100: on the
    # whole the customer gains, and only the merchant is debited.
    rewards = new_account(store, api_key=ann)
    fund(store, rewards, 100)
    shop = new_account(store, api_key=ben)
    paid = accepted(payment(store, anns, shop, 100, CashbackRequest(rewards, 1000), api_key=ann))
    post_all(store)
    refused(reverse(store, paid["id"], api_key=key_of(store, "cat"), key="r"), shop)
    refund = accepted(reverse(store, paid["id"], api_key=ben))
    assert sorted((e["account_id"], e["amount"]) for e in refund["entries"]) == sorted(
        [(anns, 100), (shop, -100), (anns, -10), (rewards, 10)]
    )


def test_the_reversal_of_a_withdrawal_debits_the_system_account_as_a_deposit_does(
    store, ann, ben, bens
):
    withdrawal = accepted_id(accept(store, movement(WITHDRAWAL, bens, None, 30), api_key=ben))
    post_all(store)
    accepted(reverse(store, withdrawal, api_key=ann))


def test_the_reversal_of_a_deposit_debits_the_account_it_credited(store, ann, bens):
    deposited = accepted_id(accept(store, movement(DEPOSIT, None, bens, 30), api_key=ann))
    post_all(store)
    refused(reverse(store, deposited, api_key=ann), bens)
