"""check_transfer refuses every malformed request with its own AcceptError for each kind of
transfer, amount_is_valid accepts exactly the ints from 1 to 2**63-1 that are not bools, and
posting_shard puts every transfer out of one account on one stable shard."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_core.domain import limits
from ledger_core.domain.model import TWO_ACCOUNT_KINDS, AcceptError, AccountFacts, TransferKind
from ledger_core.domain.rules import amount_is_valid, check_transfer, posting_shard

INT64_MAX = 2**63 - 1

ALICE = AccountFacts("acc_alice", "USD", allow_overdraft=False)
BOB = AccountFacts("acc_bob", "USD", allow_overdraft=False)
CLAIRE_EUR = AccountFacts("acc_claire", "EUR", allow_overdraft=False)
USD_SYSTEM = AccountFacts("acc_sys_usd", "USD", allow_overdraft=True, is_system=True)
EUR_SYSTEM = AccountFacts("acc_sys_eur", "EUR", allow_overdraft=True, is_system=True)

DEPOSIT, WITHDRAWAL, TRANSFER = TransferKind.DEPOSIT, TransferKind.WITHDRAWAL, TransferKind.TRANSFER

CASES = [
    # Valid requests.
    (DEPOSIT, USD_SYSTEM, ALICE, 1, None),
    (WITHDRAWAL, ALICE, USD_SYSTEM, INT64_MAX, None),
    (TRANSFER, ALICE, BOB, 100, None),
    # An account that does not exist, on either side.
    (DEPOSIT, USD_SYSTEM, None, 1, AcceptError.ACCOUNT_NOT_FOUND),
    (DEPOSIT, None, ALICE, 1, AcceptError.ACCOUNT_NOT_FOUND),
    (WITHDRAWAL, None, USD_SYSTEM, 1, AcceptError.ACCOUNT_NOT_FOUND),
    (WITHDRAWAL, ALICE, None, 1, AcceptError.ACCOUNT_NOT_FOUND),
    (TRANSFER, None, BOB, 1, AcceptError.ACCOUNT_NOT_FOUND),
    (TRANSFER, ALICE, None, 1, AcceptError.ACCOUNT_NOT_FOUND),
    (TRANSFER, None, None, 0, AcceptError.ACCOUNT_NOT_FOUND),
    # The same account on both sides.
    (TRANSFER, ALICE, ALICE, 1, AcceptError.SAME_ACCOUNT),
    (WITHDRAWAL, ALICE, ALICE, 1, AcceptError.SAME_ACCOUNT),
    # A system account on the client side.
    (DEPOSIT, USD_SYSTEM, EUR_SYSTEM, 1, AcceptError.SYSTEM_ACCOUNT),
    (WITHDRAWAL, EUR_SYSTEM, USD_SYSTEM, 1, AcceptError.SYSTEM_ACCOUNT),
    (TRANSFER, USD_SYSTEM, ALICE, 1, AcceptError.SYSTEM_ACCOUNT),
    (TRANSFER, ALICE, USD_SYSTEM, 1, AcceptError.SYSTEM_ACCOUNT),
    # Accounts of different currencies.
    (TRANSFER, ALICE, CLAIRE_EUR, 1, AcceptError.CURRENCY_MISMATCH),
    (TRANSFER, CLAIRE_EUR, ALICE, 1, AcceptError.CURRENCY_MISMATCH),
    (DEPOSIT, USD_SYSTEM, CLAIRE_EUR, 1, AcceptError.CURRENCY_MISMATCH),
    (WITHDRAWAL, CLAIRE_EUR, USD_SYSTEM, 1, AcceptError.CURRENCY_MISMATCH),
    # Amounts out of range or of the wrong type.
    (DEPOSIT, USD_SYSTEM, ALICE, 0, AcceptError.AMOUNT_OUT_OF_RANGE),
    (WITHDRAWAL, ALICE, USD_SYSTEM, -5, AcceptError.AMOUNT_OUT_OF_RANGE),
    (TRANSFER, ALICE, BOB, INT64_MAX + 1, AcceptError.AMOUNT_OUT_OF_RANGE),
    (TRANSFER, ALICE, BOB, True, AcceptError.AMOUNT_OUT_OF_RANGE),
    (TRANSFER, ALICE, BOB, 1.0, AcceptError.AMOUNT_OUT_OF_RANGE),
    (TRANSFER, ALICE, BOB, "1", AcceptError.AMOUNT_OUT_OF_RANGE),
    (TRANSFER, ALICE, BOB, None, AcceptError.AMOUNT_OUT_OF_RANGE),
]


@pytest.mark.parametrize(("kind", "source", "destination", "amount", "expected"), CASES)
def test_check_transfer(kind, source, destination, amount, expected):
    assert check_transfer(kind, source, destination, amount) == expected


def test_every_accept_error_is_reachable_by_the_cases():
    # Those are an N-entry transaction's (check_transaction) and a cashback's or a hold's
    # bounds (check_cashback, check_hold_expiry): test_movement_rules.py.
    elsewhere = {AcceptError.UNBALANCED, AcceptError.TOO_MANY_ENTRIES, AcceptError.OUT_OF_BOUNDS}
    assert {case[-1] for case in CASES} - {None} == set(AcceptError) - elsewhere


@pytest.mark.parametrize("kind", list(TransferKind))
def test_missing_account_wins_over_every_other_error(kind):
    assert check_transfer(kind, None, None, -1) == AcceptError.ACCOUNT_NOT_FOUND


def test_system_account_is_allowed_only_on_the_side_the_kind_gives_it():
    # The deposit's source and the withdrawal's destination are the system side.
    assert check_transfer(DEPOSIT, USD_SYSTEM, ALICE, 1) is None
    assert check_transfer(WITHDRAWAL, ALICE, USD_SYSTEM, 1) is None
    # The client side of a deposit is the destination, of a withdrawal the source.
    assert check_transfer(DEPOSIT, ALICE, USD_SYSTEM, 1) == AcceptError.SYSTEM_ACCOUNT
    assert check_transfer(WITHDRAWAL, USD_SYSTEM, ALICE, 1) == AcceptError.SYSTEM_ACCOUNT


def test_system_account_is_refused_before_the_currency_is_compared():
    assert check_transfer(TRANSFER, USD_SYSTEM, CLAIRE_EUR, 1) == AcceptError.SYSTEM_ACCOUNT


def test_currency_is_compared_before_the_amount():
    assert check_transfer(TRANSFER, ALICE, CLAIRE_EUR, 0) == AcceptError.CURRENCY_MISMATCH


def test_overdraft_plays_no_part_at_accept_time():
    # Accepting reads no balance: whether the money is there is decided when posting.
    assert check_transfer(TRANSFER, ALICE, BOB, INT64_MAX) is None
    lender = AccountFacts("acc_lender", "USD", allow_overdraft=True)
    assert check_transfer(TRANSFER, lender, BOB, INT64_MAX) is None


def test_accept_error_codes_are_the_documented_strings():
    assert {e.value for e in AcceptError} == {
        "account_not_found",
        "currency_mismatch",
        "same_account",
        "system_account_not_allowed",
        "invalid_amount",
        "unbalanced",
        "too_many_entries",
        "validation_error",
    }


@pytest.mark.parametrize(
    ("amount", "valid"),
    [
        (1, True),
        (limits.amount_max, True),
        (2**63 - 1, True),
        (0, False),
        (-1, False),
        (2**63, False),
        (-(2**63), False),
        (True, False),
        (False, False),
        (1.0, False),
        (Decimal(1), False),
        (Fraction(1), False),
        ("1", False),
        (b"1", False),
        (None, False),
        ([1], False),
    ],
)
def test_amount_is_valid_examples(amount, valid):
    assert amount_is_valid(amount) is valid


anything = st.one_of(
    st.integers(),
    st.integers(-2, 2),
    st.integers(2**63 - 3, 2**63 + 3),
    st.booleans(),
    st.floats(allow_nan=True),
    st.decimals(allow_nan=False),
    st.fractions(),
    st.text(max_size=5),
    st.none(),
)


@settings(max_examples=200, deadline=None, database=None)
@given(anything)
def test_amount_is_valid_iff_int_not_bool_in_range(amount):
    expected = type(amount) is int and 1 <= amount <= 2**63 - 1
    assert amount_is_valid(amount) is expected


@settings(max_examples=100, deadline=None, database=None)
@given(st.sampled_from(sorted(TWO_ACCOUNT_KINDS)), anything)
def test_well_formed_pair_is_refused_only_for_its_amount(kind, amount):
    source, destination = {
        DEPOSIT: (USD_SYSTEM, ALICE),
        WITHDRAWAL: (ALICE, USD_SYSTEM),
        TRANSFER: (ALICE, BOB),
    }[kind]
    expected = None if amount_is_valid(amount) else AcceptError.AMOUNT_OUT_OF_RANGE
    assert check_transfer(kind, source, destination, amount) == expected


# posting_shard


def test_one_shard_is_always_shard_zero():
    assert {posting_shard(f"acc_{n}", 1) for n in range(200)} == {0}


@pytest.mark.parametrize(
    ("account_id", "shards", "shard"),
    # crc32 values, pinned: hash() would differ between processes, and the API and the
    # workers must agree on where a transfer goes.
    [("acc_alice", 8, 1), ("acc_bob", 8, 0), ("acc_carol", 8, 5), ("acc_carol", 16, 5)],
)
def test_shard_is_crc32_of_the_debited_account(account_id, shards, shard):
    assert posting_shard(account_id, shards) == shard


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=40), st.integers(1, 64))
def test_shard_is_stable_and_in_range(account_id, shards):
    shard = posting_shard(account_id, shards)
    assert 0 <= shard < shards
    assert posting_shard(account_id, shards) == shard


def test_accounts_spread_over_every_shard():
    shards = 8
    counts = [0] * shards
    for n in range(800):
        counts[posting_shard(f"acc_{n:04}", shards)] += 1
    # Roughly even: a hot shard would make one worker post for everyone.
    assert min(counts) >= 50
