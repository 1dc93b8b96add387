"""check_transfer refuses every malformed request with its own AcceptError for each kind of
transfer, and amount_is_valid accepts exactly the ints from 1 to 2**63-1 that are not bools."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_core.domain import limits
from ledger_core.domain.model import (
    AcceptError,
    AccountState,
    TransferKind,
    amount_is_valid,
    check_transfer,
)

INT64_MAX = 2**63 - 1

ALICE = AccountState("acc_alice", "USD", 100, False)
BOB = AccountState("acc_bob", "USD", 0, False)
CLAIRE_EUR = AccountState("acc_claire", "EUR", 0, False)
USD_SYSTEM = AccountState("acc_sys_usd", "USD", 0, True, is_system=True)
EUR_SYSTEM = AccountState("acc_sys_eur", "EUR", 0, True, is_system=True)

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
    assert {case[-1] for case in CASES} - {None} == set(AcceptError)


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


def test_balances_and_overdraft_play_no_part_at_accept_time():
    broke = AccountState("acc_broke", "USD", 0, False)
    assert check_transfer(TRANSFER, broke, BOB, INT64_MAX) is None


def test_accept_error_codes_are_the_documented_strings():
    assert {e.value for e in AcceptError} == {
        "account_not_found",
        "currency_mismatch",
        "same_account",
        "system_account_not_allowed",
        "invalid_amount",
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
@given(st.sampled_from(list(TransferKind)), anything)
def test_well_formed_pair_is_refused_only_for_its_amount(kind, amount):
    source, destination = {
        DEPOSIT: (USD_SYSTEM, ALICE),
        WITHDRAWAL: (ALICE, USD_SYSTEM),
        TRANSFER: (ALICE, BOB),
    }[kind]
    expected = None if amount_is_valid(amount) else AcceptError.AMOUNT_OUT_OF_RANGE
    assert check_transfer(kind, source, destination, amount) == expected
