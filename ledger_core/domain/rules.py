"""Accept-time rules: what can be refused before anything is stored, with no lock and no
balance. Whether the money is there is decided later, by the posting rules."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

from ledger_core.domain import limits
from ledger_core.domain.model import AcceptError, AccountFacts, Leg, TransferKind


def amount_is_valid(amount: object) -> bool:
    # bool is an int subclass in Python; `true` is not an amount.
    return (
        isinstance(amount, int)
        and not isinstance(amount, bool)
        and limits.amount_min <= amount <= limits.amount_max
    )


def check_transfer(
    kind: TransferKind,
    source: AccountFacts | None,
    destination: AccountFacts | None,
    amount: int,
) -> AcceptError | None:
    """Why this movement cannot be accepted, or None.

    For a deposit the source is the currency's system account, for a withdrawal the
    destination is; every other side is a client account, which may not be a system one.
    """
    if source is None or destination is None:
        return AcceptError.ACCOUNT_NOT_FOUND
    client_sides = {
        TransferKind.DEPOSIT: (destination,),
        TransferKind.WITHDRAWAL: (source,),
        TransferKind.TRANSFER: (source, destination),
    }[kind]
    # Before the same-account rule: a deposit into the system account would otherwise be
    # reported as "same account", although the client named only one account.
    if any(account.is_system for account in client_sides):
        return AcceptError.SYSTEM_ACCOUNT
    if source.id == destination.id:
        return AcceptError.SAME_ACCOUNT
    if source.currency != destination.currency:
        return AcceptError.CURRENCY_MISMATCH
    if not amount_is_valid(amount):
        return AcceptError.AMOUNT_OUT_OF_RANGE
    return None


def posting_shard(debited_account_id: str, shards: int) -> int:
    """The posting shard of a transfer, from the account it debits: transfers out of one
    account post in acceptance order on one shard, and a hot account holds up only its
    own shard. crc32, not hash(): every process must agree."""
    return zlib.crc32(debited_account_id.encode()) % shards


def check_transaction(legs: Sequence[Leg], facts: Mapping[str, AccountFacts]) -> AcceptError | None:
    """Accept-time rules of an N-entry transaction: every account known and a client's,
    at least two accounts, amounts in range, and each currency's entries summing to zero."""
    if not 2 <= len(legs) <= limits.transaction_entries_max:
        return AcceptError.TOO_MANY_ENTRIES
    sums: dict[str, int] = {}
    for leg in legs:
        error = _check_leg(leg, facts.get(leg.account_id))
        if error is not None:
            return error
        currency = facts[leg.account_id].currency
        sums[currency] = sums.get(currency, 0) + leg.amount
    if len({leg.account_id for leg in legs}) < 2:
        error = AcceptError.SAME_ACCOUNT
    elif any(sums.values()):
        error = AcceptError.UNBALANCED
    elif debited(legs) > limits.amount_max:  # what it moves is stored as one amount
        error = AcceptError.AMOUNT_OUT_OF_RANGE
    return error


def _check_leg(leg: Leg, account: AccountFacts | None) -> AcceptError | None:
    if account is None:
        return AcceptError.ACCOUNT_NOT_FOUND
    if account.is_system:
        return AcceptError.SYSTEM_ACCOUNT
    # type(), not isinstance(): a bool is an int subclass and is no amount.
    if type(leg.amount) is not int or leg.amount == 0 or abs(leg.amount) > limits.amount_max:
        return AcceptError.AMOUNT_OUT_OF_RANGE
    return None


def debited(legs: Sequence[Leg]) -> int:
    """What a movement moves: the sum of its debits."""
    return -sum(leg.amount for leg in legs if leg.amount < 0)


def check_cashback(basis_points: int, available_after_seconds: int | None) -> AcceptError | None:
    """A rate of 0 to the whole amount (a negative one would pay the rewards account from
    the customer), and a delay of 1 s to `cashback_delay_seconds_max` if any."""
    if not 0 <= basis_points <= limits.basis_points_per_unit:
        return AcceptError.OUT_OF_BOUNDS
    if available_after_seconds is not None and not (
        1 <= available_after_seconds <= limits.cashback_delay_seconds_max
    ):
        return AcceptError.OUT_OF_BOUNDS
    return None


def check_hold_expiry(expires_in_seconds: int | None) -> AcceptError | None:
    """1 s to `hold_expires_in_seconds_max` if any: an expiry in the past reserves nothing."""
    if expires_in_seconds is not None and not (
        1 <= expires_in_seconds <= limits.hold_expires_in_seconds_max
    ):
        return AcceptError.OUT_OF_BOUNDS
    return None


def cashback_amount(amount: int, basis_points: int) -> int:
    """Cashback of a payment: rounded down, so it never exceeds its share of the amount
    and never creates money that was not paid for."""
    return amount * basis_points // limits.basis_points_per_unit


def reversal_legs(
    original: Sequence[Leg], original_amount: int, amount: int, reversed_before: int = 0
) -> list[Leg]:
    """The opposite of a movement's legs for `amount` more of its `original_amount`, after
    `reversed_before` was reversed already.

    Each leg is taken back in proportion to what is reversed in all, rounded down:
    floor(|leg| * (before + amount) / total) - floor(|leg| * before / total). Partial
    reversals therefore add up to exactly the original when they reach its amount (no
    minor unit is left behind by rounding), and never take back more than a leg gave.
    Legs of equal size scale alike, so a movement made of equal pairs (a payment and its
    cashback) stays balanced; legs that round to nothing are left out."""
    after = reversed_before + amount
    if not 0 <= reversed_before < after <= original_amount:
        raise ValueError(f"cannot reverse {amount} after {reversed_before} of {original_amount}")
    scaled = []
    for leg in original:
        size = abs(leg.amount)
        part = size * after // original_amount - size * reversed_before // original_amount
        if part:
            scaled.append(Leg(leg.account_id, part if leg.amount < 0 else -part))
    return scaled
