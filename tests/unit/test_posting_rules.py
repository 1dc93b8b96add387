"""post_batch moves money in pairs of opposite entries, conserves every balance, keeps them in
int64 and out of unauthorised overdraft, and a batch is exactly its transfers posted one by one."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_core.domain import limits
from ledger_core.domain.model import (
    AccountState,
    BatchResult,
    Posted,
    Rejected,
    RejectionReason,
    TransferToPost,
    post_batch,
)

INT64_MAX = 2**63 - 1  # the largest amount
BALANCE_MIN = limits.balance_min
BALANCE_MAX = limits.balance_max
CURRENCIES = ("USD", "EUR", "JPY")

# Balances and amounts cluster at the edges, where the interesting rejections live.
non_negative_balances = st.one_of(
    st.integers(0, 1_000),
    st.integers(BALANCE_MAX - 1_000, BALANCE_MAX),
    st.integers(0, BALANCE_MAX),
)
any_balances = st.one_of(
    st.integers(-1_000, 1_000),
    st.integers(BALANCE_MIN, BALANCE_MIN + 1_000),
    st.integers(BALANCE_MAX - 1_000, BALANCE_MAX),
    st.integers(BALANCE_MIN, BALANCE_MAX),
)
amounts = st.one_of(
    st.integers(1, 1_500),
    st.integers(1, INT64_MAX),
    st.integers(INT64_MAX - 1_000, INT64_MAX),
)


@st.composite
def books(draw: st.DrawFn) -> tuple[dict[str, AccountState], list[TransferToPost]]:
    """A few accounts in one to three currencies and valid transfers between them."""
    currency_count = draw(st.integers(1, len(CURRENCIES)))
    accounts: dict[str, AccountState] = {}
    for index in range(draw(st.integers(2, 6))):
        overdraft = draw(st.booleans())
        account = AccountState(
            id=f"acc_{index}",
            currency=draw(st.sampled_from(CURRENCIES[:currency_count])),
            balance=draw(any_balances if overdraft else non_negative_balances),
            allow_overdraft=overdraft,
        )
        accounts[account.id] = account
    pairs = [
        (s.id, d.id)
        for s in accounts.values()
        for d in accounts.values()
        if s.id != d.id and s.currency == d.currency
    ]
    if not pairs:
        return accounts, []
    moves = draw(st.lists(st.tuples(st.sampled_from(pairs), amounts), max_size=25))
    transfers = [
        TransferToPost(f"tr_{n:03}", source, destination, amount)
        for n, ((source, destination), amount) in enumerate(moves)
    ]
    return accounts, transfers


def final_balances(accounts: dict[str, AccountState], result: BatchResult) -> dict[str, int]:
    """Balances after the batch: untouched accounts keep the balance they had."""
    return {
        account_id: result.balances.get(account_id, a.balance) for account_id, a in accounts.items()
    }


def post_one_by_one(
    accounts: dict[str, AccountState], transfers: list[TransferToPost]
) -> tuple[list[Posted | Rejected], dict[str, int]]:
    """Post each transfer in a batch of its own, carrying the balances forward."""
    current = dict(accounts)
    outcomes: list[Posted | Rejected] = []
    for transfer in transfers:
        result = post_batch(current, [transfer])
        assert len(result.outcomes) == 1
        outcomes.extend(result.outcomes)
        for account_id, balance in result.balances.items():
            current[account_id] = replace(current[account_id], balance=balance)
    return outcomes, {account_id: a.balance for account_id, a in current.items()}


PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(books())
def test_one_outcome_per_transfer_in_input_order(book):
    accounts, transfers = book
    result = post_batch(accounts, transfers)
    assert [o.transfer_id for o in result.outcomes] == [t.id for t in transfers]


@PROPERTY_SETTINGS
@given(books())
def test_every_posting_is_a_balanced_pair_of_entries(book):
    accounts, transfers = book
    result = post_batch(accounts, transfers)
    for transfer, outcome in zip(transfers, result.outcomes, strict=True):
        if isinstance(outcome, Posted):
            assert outcome.debit.amount == -transfer.amount
            assert outcome.credit.amount == transfer.amount
            assert outcome.debit.amount == -outcome.credit.amount
            assert outcome.debit.account_id == transfer.source_account_id
            assert outcome.credit.account_id == transfer.destination_account_id
            assert outcome.debit.transfer_id == outcome.credit.transfer_id == transfer.id
        else:
            assert isinstance(outcome, Rejected)
            assert outcome.reason in set(RejectionReason)


@PROPERTY_SETTINGS
@given(books())
def test_money_is_conserved_overall_and_per_currency(book):
    accounts, transfers = book
    after = final_balances(accounts, post_batch(accounts, transfers))
    assert sum(after.values()) == sum(a.balance for a in accounts.values())
    for currency in CURRENCIES:
        ids = [i for i, a in accounts.items() if a.currency == currency]
        assert sum(after[i] for i in ids) == sum(accounts[i].balance for i in ids)


@PROPERTY_SETTINGS
@given(books())
def test_no_unauthorised_overdraft_and_no_balance_leaves_int64(book):
    accounts, transfers = book
    result = post_batch(accounts, transfers)
    for account_id, balance in final_balances(accounts, result).items():
        assert BALANCE_MIN <= balance <= BALANCE_MAX
        if not accounts[account_id].allow_overdraft:
            assert balance >= 0
    for outcome in result.outcomes:
        if isinstance(outcome, Posted):
            for entry in (outcome.debit, outcome.credit):
                assert BALANCE_MIN <= entry.balance_after <= BALANCE_MAX
                if not accounts[entry.account_id].allow_overdraft:
                    assert entry.balance_after >= 0


@PROPERTY_SETTINGS
@given(books())
def test_balance_after_is_the_running_balance(book):
    accounts, transfers = book
    result = post_batch(accounts, transfers)
    running = {account_id: a.balance for account_id, a in accounts.items()}
    for transfer, outcome in zip(transfers, result.outcomes, strict=True):
        if isinstance(outcome, Posted):
            running[transfer.source_account_id] -= transfer.amount
            running[transfer.destination_account_id] += transfer.amount
            assert outcome.debit.balance_after == running[transfer.source_account_id]
            assert outcome.credit.balance_after == running[transfer.destination_account_id]
    assert final_balances(accounts, result) == running


@PROPERTY_SETTINGS
@given(books())
def test_reported_balances_are_exactly_the_accounts_a_posting_touched(book):
    accounts, transfers = book
    result = post_batch(accounts, transfers)
    touched = {
        entry.account_id
        for o in result.outcomes
        if isinstance(o, Posted)
        for entry in (o.debit, o.credit)
    }
    assert set(result.balances) == touched


@PROPERTY_SETTINGS
@given(books())
def test_each_outcome_is_the_one_the_rules_call_for(book):
    """Rejected only with a reason that holds at that point, posted whenever nothing forbids it."""
    accounts, transfers = book
    result = post_batch(accounts, transfers)
    running = {account_id: a.balance for account_id, a in accounts.items()}
    for transfer, outcome in zip(transfers, result.outcomes, strict=True):
        source = accounts[transfer.source_account_id]
        source_after = running[source.id] - transfer.amount
        destination_after = running[transfer.destination_account_id] + transfer.amount
        overdrawn = source_after < 0 and not source.allow_overdraft
        overflows = source_after < BALANCE_MIN or destination_after > BALANCE_MAX
        if overdrawn:
            assert outcome == Rejected(transfer.id, RejectionReason.INSUFFICIENT_FUNDS)
        elif overflows:
            assert outcome == Rejected(transfer.id, RejectionReason.BALANCE_OVERFLOW)
        else:
            assert isinstance(outcome, Posted)
            running[source.id] = source_after
            running[transfer.destination_account_id] = destination_after


@PROPERTY_SETTINGS
@given(books())
def test_a_batch_is_the_same_transfers_posted_one_by_one(book):
    accounts, transfers = book
    batch = post_batch(accounts, transfers)
    outcomes, balances = post_one_by_one(accounts, transfers)
    assert batch.outcomes == outcomes
    assert final_balances(accounts, batch) == balances


@PROPERTY_SETTINGS
@given(books(), st.integers(0, 25))
def test_a_batch_split_in_two_gives_the_same_result(book, cut):
    accounts, transfers = book
    whole = post_batch(accounts, transfers)
    first = post_batch(accounts, transfers[:cut])
    carried = {
        account_id: replace(a, balance=first.balances.get(account_id, a.balance))
        for account_id, a in accounts.items()
    }
    second = post_batch(carried, transfers[cut:])
    assert first.outcomes + second.outcomes == whole.outcomes
    assert final_balances(carried, second) == final_balances(accounts, whole)


@PROPERTY_SETTINGS
@given(books())
def test_post_batch_does_not_mutate_its_input(book):
    accounts, transfers = book
    snapshot = dict(accounts)
    post_batch(accounts, transfers)
    assert accounts == snapshot


# Examples.


def account(account_id: str, balance: int, *, overdraft: bool = False, currency: str = "USD"):
    return AccountState(account_id, currency, balance, overdraft)


def accounts_of(*states: AccountState) -> dict[str, AccountState]:
    return {s.id: s for s in states}


def test_exact_funds_post_and_leave_zero():
    result = post_batch(
        accounts_of(account("a", 100), account("b", 5)), [TransferToPost("t1", "a", "b", 100)]
    )
    [outcome] = result.outcomes
    assert isinstance(outcome, Posted)
    assert outcome.debit.amount == -100
    assert outcome.debit.balance_after == 0
    assert outcome.credit.balance_after == 105
    assert result.balances == {"a": 0, "b": 105}


def test_one_unit_more_than_the_funds_is_rejected_and_touches_nothing():
    result = post_batch(
        accounts_of(account("a", 100), account("b", 5)), [TransferToPost("t1", "a", "b", 101)]
    )
    assert result.outcomes == [Rejected("t1", RejectionReason.INSUFFICIENT_FUNDS)]
    assert result.balances == {}


def test_empty_account_cannot_send_one_unit():
    result = post_batch(
        accounts_of(account("a", 0), account("b", 0)), [TransferToPost("t1", "a", "b", 1)]
    )
    assert result.outcomes == [Rejected("t1", RejectionReason.INSUFFICIENT_FUNDS)]


def test_overdraft_account_may_go_negative():
    result = post_batch(
        accounts_of(account("a", 10, overdraft=True), account("b", 0)),
        [TransferToPost("t1", "a", "b", 50)],
    )
    [outcome] = result.outcomes
    assert isinstance(outcome, Posted)
    assert result.balances == {"a": -40, "b": 50}


def test_credit_past_balance_max_is_rejected_as_overflow():
    result = post_batch(
        accounts_of(account("a", 10), account("b", BALANCE_MAX)),
        [TransferToPost("t1", "a", "b", 1)],
    )
    assert result.outcomes == [Rejected("t1", RejectionReason.BALANCE_OVERFLOW)]
    assert result.balances == {}


def test_credit_up_to_balance_max_posts():
    result = post_batch(
        accounts_of(account("a", 10), account("b", BALANCE_MAX - 1)),
        [TransferToPost("t1", "a", "b", 1)],
    )
    assert result.balances == {"a": 9, "b": BALANCE_MAX}


def test_debit_past_balance_min_is_rejected_as_overflow_even_with_overdraft():
    result = post_batch(
        accounts_of(account("a", BALANCE_MIN, overdraft=True), account("b", 0)),
        [TransferToPost("t1", "a", "b", 1)],
    )
    assert result.outcomes == [Rejected("t1", RejectionReason.BALANCE_OVERFLOW)]


def test_largest_amount_moves_the_whole_int64_range():
    result = post_batch(
        accounts_of(account("a", INT64_MAX), account("b", 0)),
        [TransferToPost("t1", "a", "b", INT64_MAX)],
    )
    assert result.balances == {"a": 0, "b": INT64_MAX}


def test_balances_hold_many_largest_amounts():
    """Balances are 128-bit: one maximal deposit must not exhaust a currency's system account."""
    system = account("sys", -INT64_MAX, overdraft=True)
    result = post_batch(
        accounts_of(system, account("b", INT64_MAX)), [TransferToPost("t1", "sys", "b", INT64_MAX)]
    )
    assert result.balances == {"sys": -2 * INT64_MAX, "b": 2 * INT64_MAX}


def test_rejected_transfer_does_not_stop_the_next_one():
    result = post_batch(
        accounts_of(account("a", 100), account("b", 0)),
        [TransferToPost("t1", "a", "b", 150), TransferToPost("t2", "a", "b", 100)],
    )
    assert result.outcomes[0] == Rejected("t1", RejectionReason.INSUFFICIENT_FUNDS)
    assert isinstance(result.outcomes[1], Posted)
    assert result.balances == {"a": 0, "b": 100}


def test_later_transfer_spends_money_an_earlier_one_in_the_batch_brought():
    accounts = accounts_of(account("a", 0), account("b", 100), account("c", 0))
    funded_first = post_batch(
        accounts, [TransferToPost("t1", "b", "a", 100), TransferToPost("t2", "a", "c", 100)]
    )
    assert all(isinstance(o, Posted) for o in funded_first.outcomes)
    assert funded_first.balances == {"a": 0, "b": 0, "c": 100}

    spent_first = post_batch(
        accounts, [TransferToPost("t2", "a", "c", 100), TransferToPost("t1", "b", "a", 100)]
    )
    assert spent_first.outcomes[0] == Rejected("t2", RejectionReason.INSUFFICIENT_FUNDS)
    assert spent_first.balances == {"a": 100, "b": 0}


def test_empty_batch_posts_nothing():
    assert post_batch(accounts_of(account("a", 1)), []) == BatchResult(outcomes=[], balances={})


@pytest.mark.parametrize("amount", [0, -1, INT64_MAX + 1, True, 1.0, "1", None])
def test_invalid_amount_raises(amount):
    with pytest.raises(ValueError, match="invalid amount"):
        post_batch(
            accounts_of(account("a", 100), account("b", 0)),
            [TransferToPost("t1", "a", "b", amount)],
        )


def test_invalid_amount_later_in_the_batch_raises_rather_than_half_posting():
    with pytest.raises(ValueError):
        post_batch(
            accounts_of(account("a", 100), account("b", 0)),
            [TransferToPost("t1", "a", "b", 1), TransferToPost("t2", "a", "b", 0)],
        )


def test_transfer_to_itself_raises():
    with pytest.raises(ValueError, match="itself"):
        post_batch(accounts_of(account("a", 100)), [TransferToPost("t1", "a", "a", 1)])


def test_cross_currency_transfer_raises():
    with pytest.raises(ValueError, match="currencies"):
        post_batch(
            accounts_of(account("a", 100), account("b", 0, currency="EUR")),
            [TransferToPost("t1", "a", "b", 1)],
        )


@pytest.mark.parametrize(
    ("source", "destination"), [("missing", "b"), ("a", "missing")], ids=["source", "destination"]
)
def test_account_missing_from_the_locked_set_raises_key_error(source, destination):
    with pytest.raises(KeyError):
        post_batch(
            accounts_of(account("a", 100), account("b", 0)),
            [TransferToPost("t1", source, destination, 1)],
        )
