"""The money rules of the movements, for any amounts: cashback is the floor of its share and
never more; a reversal takes back at most what each leg gave, partial reversals together
never more than the original, a whole one exactly its opposite; a payment's legs scale to
legs that still balance; and a transaction balances per currency or is refused."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ledger_core.domain import limits
from ledger_core.domain.model import AcceptError, AccountFacts, Leg
from ledger_core.domain.rules import (
    cashback_amount,
    check_cashback,
    check_hold_expiry,
    check_transaction,
    debited,
    reversal_legs,
)

FAST = settings(max_examples=300, deadline=None, database=None)
amounts = st.integers(1, limits.amount_max)
basis_points = st.integers(0, limits.basis_points_per_unit)


# --- cashback -------------------------------------------------------------------------------


@FAST
@given(st.integers(-(2**63), 2**63), st.none() | st.integers(-(2**63), 2**63))
def test_a_cashback_is_accepted_only_within_its_bounds(points, delay):
    within = 0 <= points <= limits.basis_points_per_unit and (
        delay is None or 1 <= delay <= limits.cashback_delay_seconds_max
    )
    assert check_cashback(points, delay) == (None if within else AcceptError.OUT_OF_BOUNDS)


@pytest.mark.parametrize(
    ("expires", "error"),
    [
        (None, None),
        (1, None),
        (limits.hold_expires_in_seconds_max, None),
        (0, AcceptError.OUT_OF_BOUNDS),
        (-5, AcceptError.OUT_OF_BOUNDS),
        (limits.hold_expires_in_seconds_max + 1, AcceptError.OUT_OF_BOUNDS),
    ],
)
def test_a_hold_expires_within_its_bounds(expires, error):
    assert check_hold_expiry(expires) == error


@FAST
@given(amounts, basis_points)
def test_cashback_is_the_floor_of_its_share_of_the_amount(amount, points):
    cash = cashback_amount(amount, points)
    share = amount * points  # in ten-thousandths
    # Never above its share (payments' ck_payments_cashback_rounded_down), and the
    # largest amount that is not: rounded down, not truncated some other way.
    assert 0 <= cash * limits.basis_points_per_unit <= share
    assert (cash + 1) * limits.basis_points_per_unit > share
    assert cash <= amount


@FAST
@given(amounts, basis_points, basis_points)
def test_more_basis_points_never_give_less_cashback(amount, low, high):
    low, high = sorted((low, high))
    assert cashback_amount(amount, low) <= cashback_amount(amount, high)


@pytest.mark.parametrize(
    ("amount", "points", "cash"),
    [(999, 150, 14), (100, 10_000, 100), (1, 9_999, 0), (10_000, 1, 1), (5, 0, 0)],
)
def test_cashback_examples(amount, points, cash):
    assert cashback_amount(amount, points) == cash


# --- reversals ------------------------------------------------------------------------------


def legs_of(amounts_by_account: Sequence[int]) -> list[Leg]:
    """Legs on distinct accounts a0, a1, ... (so a reversal's legs pair up by account)."""
    return [Leg(f"a{i}", amount) for i, amount in enumerate(amounts_by_account)]


@st.composite
def movements(draw: st.DrawFn) -> tuple[list[Leg], int]:
    """Balanced legs on distinct accounts, and the movement's amount (what it debits)."""
    debits = draw(st.lists(st.integers(1, 10**12), min_size=1, max_size=5))
    total = sum(debits)
    cuts = sorted(draw(st.lists(st.integers(1, total - 1), max_size=4)) if total > 1 else [])
    credits = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True) if b > a]
    legs = legs_of([-d for d in debits] + credits)
    return legs, total


def taken_back(original: Sequence[Leg], reversal: Sequence[Leg]) -> dict[str, int]:
    """What the reversal gives back to each account's leg, in the leg's own direction."""
    signs = {leg.account_id: (1 if leg.amount > 0 else -1) for leg in original}
    back: dict[str, int] = {}
    for leg in reversal:
        back[leg.account_id] = back.get(leg.account_id, 0) - signs[leg.account_id] * leg.amount
    return back


@FAST
@given(movements(), st.data())
def test_a_partial_reversal_takes_back_at_most_each_leg_and_opposes_it(movement, data):
    legs, total = movement
    amount = data.draw(st.integers(1, total))
    reversal = reversal_legs(legs, total, amount)
    back = taken_back(legs, reversal)
    for leg in legs:
        # Opposite in sign, and never more than the leg gave.
        assert 0 <= back.get(leg.account_id, 0) <= abs(leg.amount)
    assert all(leg.amount != 0 for leg in reversal)
    assert debited(reversal) <= total


@FAST
@given(movements(), st.lists(st.integers(1, 10**12), min_size=1, max_size=6))
def test_partial_reversals_within_the_original_never_take_back_more_than_it(movement, wanted):
    legs, total = movement
    # As the service allows them: each within what is left.
    left, parts = total, []
    for part in wanted:
        if part <= left:
            parts.append(part)
            left -= part
    assume(parts)
    back: dict[str, int] = {}
    before = 0
    for part in parts:
        reversal = reversal_legs(legs, total, part, before)
        for account_id, amount in taken_back(legs, reversal).items():
            back[account_id] = back.get(account_id, 0) + amount
        before += part
    for leg in legs:
        assert back.get(leg.account_id, 0) <= abs(leg.amount)


@FAST
@given(movements(), st.lists(st.integers(1, 10**12), min_size=1, max_size=6))
def test_partial_reversals_that_reach_the_original_take_back_exactly_each_leg(movement, cuts):
    legs, total = movement
    # Split the total at sorted cut points: parts that add up to it exactly.
    points = [*sorted({c % total for c in cuts} - {0}), total]
    before, back = 0, dict.fromkeys((leg.account_id for leg in legs), 0)
    for point in points:
        for account_id, amount in taken_back(
            legs, reversal_legs(legs, total, point - before, before)
        ).items():
            back[account_id] += amount
        before = point
    expected: dict[str, int] = {}
    for leg in legs:
        expected[leg.account_id] = expected.get(leg.account_id, 0) + abs(leg.amount)
    assert back == expected


def test_two_half_refunds_of_a_cashback_payment_leave_no_cashback_behind():
    legs = [Leg("customer", -1000), Leg("merchant", 1000), Leg("rewards", -15), Leg("customer", 15)]
    first = reversal_legs(legs, 1000, 500)
    second = reversal_legs(legs, 1000, 500, 500)
    assert first == [
        Leg("customer", 500),
        Leg("merchant", -500),
        Leg("rewards", 7),
        Leg("customer", -7),
    ]
    assert second == [
        Leg("customer", 500),
        Leg("merchant", -500),
        Leg("rewards", 8),
        Leg("customer", -8),
    ]


def test_a_reversal_beyond_what_is_left_is_a_bug():
    legs = [Leg("a", -10), Leg("b", 10)]
    with pytest.raises(ValueError):
        reversal_legs(legs, 10, 5, 6)


@FAST
@given(movements())
def test_a_whole_reversal_is_exactly_the_opposite(movement):
    legs, total = movement
    assert reversal_legs(legs, total, total) == [Leg(leg.account_id, -leg.amount) for leg in legs]


@FAST
@given(st.integers(1, 10**15), basis_points, st.data())
def test_a_payment_scales_to_legs_that_still_balance(amount, points, data):
    cash = cashback_amount(amount, points)
    legs = [Leg("customer", -amount), Leg("merchant", amount)]
    if cash:
        legs += [Leg("rewards", -cash), Leg("customer", cash)]
    part = data.draw(st.integers(1, amount))
    reversal = reversal_legs(legs, amount, part)
    assert sum(leg.amount for leg in reversal) == 0
    # The main pair exactly, the cashback in proportion, rounded down.
    assert Leg("customer", part) in reversal and Leg("merchant", -part) in reversal
    cash_back = sum(leg.amount for leg in reversal if leg.account_id == "rewards")
    assert 0 <= cash_back <= cash
    assert cash_back * amount <= cash * part


def test_a_leg_that_rounds_to_nothing_is_left_out():
    legs = [Leg("a", -1000), Leg("b", 997), Leg("c", 3)]
    assert reversal_legs(legs, 1000, 100) == [Leg("a", 100), Leg("b", -99)]


# --- transactions ---------------------------------------------------------------------------


FACTS = {
    "usd1": AccountFacts("usd1", "USD", False),
    "usd2": AccountFacts("usd2", "USD", False),
    "eur1": AccountFacts("eur1", "EUR", False),
    "eur2": AccountFacts("eur2", "EUR", False),
    "system": AccountFacts("system", "USD", True, is_system=True),
}


@st.composite
def balanced_legs(draw: st.DrawFn) -> list[Leg]:
    """Per currency, a debit split over credits on the other account of that currency."""
    legs: list[Leg] = []
    for debtor, creditor in draw(
        st.lists(st.sampled_from([("usd1", "usd2"), ("eur1", "eur2")]), min_size=1, max_size=3)
    ):
        amount = draw(st.integers(1, 10**9))
        split = draw(st.integers(0, amount - 1))
        legs.append(Leg(debtor, -amount))
        legs += [Leg(creditor, part) for part in (amount - split, split) if part]
    return legs[: limits.transaction_entries_max]


@FAST
@given(balanced_legs())
def test_legs_balanced_per_currency_are_accepted(legs):
    assume(2 <= len(legs) <= limits.transaction_entries_max)
    assert check_transaction(legs, FACTS) is None


@FAST
@given(balanced_legs(), st.data())
def test_one_leg_off_by_anything_is_unbalanced(legs, data):
    index = data.draw(st.integers(0, len(legs) - 1))
    delta = data.draw(st.integers(-(10**6), 10**6).filter(bool))
    changed = Leg(legs[index].account_id, legs[index].amount + delta)
    assume(changed.amount != 0)
    legs = [*legs[:index], changed, *legs[index + 1 :]]
    assert check_transaction(legs, FACTS) is AcceptError.UNBALANCED


@pytest.mark.parametrize(
    ("legs", "error"),
    [
        ([Leg("usd1", -5), Leg("eur1", 5)], AcceptError.UNBALANCED),
        ([Leg("usd1", -5), Leg("nobody", 5)], AcceptError.ACCOUNT_NOT_FOUND),
        ([Leg("system", -5), Leg("usd1", 5)], AcceptError.SYSTEM_ACCOUNT),
        ([Leg("usd1", -5), Leg("usd1", 5)], AcceptError.SAME_ACCOUNT),
        ([Leg("usd1", 0), Leg("usd2", 0)], AcceptError.AMOUNT_OUT_OF_RANGE),
        ([Leg("usd1", -5)], AcceptError.TOO_MANY_ENTRIES),
        ([Leg("usd1", -1), Leg("usd2", 1)] * 26, AcceptError.TOO_MANY_ENTRIES),
    ],
)
def test_transactions_are_refused_for_their_first_broken_rule(legs, error):
    assert check_transaction(legs, FACTS) is error
