"""The posting rules: what a batch of PENDING transfers does to accounts read under lock.

Pure: the posting worker loads locked rows, hands them to `post_batch`, and writes back
what it returns. Expected failures are values with names (`Rejected`); a broken invariant
(an account missing from the locked set, legs that do not balance) raises, because it
means the input is corrupt and no outcome would be right.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from ledger_core.domain import limits
from ledger_core.domain.model import (
    AccountState,
    BatchResult,
    Entry,
    Leg,
    Outcome,
    Posted,
    Rejected,
    RejectionReason,
    TransferToPost,
)


def post_batch(
    accounts: Mapping[str, AccountState], transfers: Sequence[TransferToPost]
) -> BatchResult:
    """Apply transfers in the order given, each against the balances the previous ones left.

    Each transfer has its own outcome: a rejection never undoes its neighbours, except
    inside an atomic group (consecutive transfers sharing a `group_id`), which posts
    whole or not at all. `accounts` must hold every account the transfers name.
    """
    balances = {account_id: account.balance for account_id, account in accounts.items()}
    touched: dict[str, int] = {}
    outcomes: list[Outcome] = []
    for unit in _units(transfers):
        # Work on an overlay, so that a rejected unit leaves no trace in the balances.
        overlay: dict[str, int] = {}
        unit_outcomes: list[Outcome] = []
        for transfer in unit:
            outcome = _apply(transfer, accounts, balances, overlay)
            if isinstance(outcome, Rejected):
                unit_outcomes = _reject_group(unit, outcome) if len(unit) > 1 else [outcome]
                overlay = {}
                break
            unit_outcomes.append(outcome)
        balances.update(overlay)
        touched.update(overlay)
        outcomes += unit_outcomes
    return BatchResult(outcomes=outcomes, balances=touched)


def _units(transfers: Sequence[TransferToPost]) -> Iterator[Sequence[TransferToPost]]:
    """Single transfers, and atomic groups as one unit each."""
    start = 0
    seen_groups: set[str] = set()
    while start < len(transfers):
        group_id = transfers[start].group_id
        end = start + 1
        if group_id is not None:
            if group_id in seen_groups:
                raise ValueError(f"atomic group {group_id} is split within the batch")
            seen_groups.add(group_id)
            while end < len(transfers) and transfers[end].group_id == group_id:
                end += 1
        yield transfers[start:end]
        start = end


def _reject_group(unit: Sequence[TransferToPost], failed: Rejected) -> list[Outcome]:
    return [
        failed
        if transfer.id == failed.transfer_id
        else Rejected(transfer.id, RejectionReason.LINKED_TRANSFER_FAILED)
        for transfer in unit
    ]


def _check_legs(transfer: TransferToPost, accounts: Mapping[str, AccountState]) -> None:
    """Accept-time checks guarantee these; a violation means corrupted input, so crash."""
    if len(transfer.legs) < 2:
        raise ValueError(f"transfer {transfer.id} has fewer than two legs")
    sums: dict[str, int] = {}
    for leg in transfer.legs:
        if leg.account_id not in accounts:
            raise ValueError(f"transfer {transfer.id} names unlocked account {leg.account_id}")
        # type(), not isinstance(): a bool is an int subclass and is no amount.
        if type(leg.amount) is not int:
            raise ValueError(f"transfer {transfer.id} has a non-integer amount {leg.amount!r}")
        if leg.amount == 0 or abs(leg.amount) > limits.amount_max:
            raise ValueError(f"transfer {transfer.id} has an invalid amount {leg.amount!r}")
        currency = accounts[leg.account_id].currency
        sums[currency] = sums.get(currency, 0) + leg.amount
    if any(sums.values()):
        raise ValueError(f"transfer {transfer.id} does not balance per currency: {sums}")
    if len({leg.account_id for leg in transfer.legs}) < 2:
        raise ValueError(f"transfer {transfer.id} moves money from an account to itself")


def _debit_last(leg: Leg) -> bool:
    return leg.amount < 0


def _apply(
    transfer: TransferToPost,
    accounts: Mapping[str, AccountState],
    balances: Mapping[str, int],
    overlay: dict[str, int],
) -> Outcome:
    """Post one transfer onto `overlay`, or say why not (leaving `overlay` as it was)."""
    _check_legs(transfer, accounts)
    # Credits before debits: an account that both receives and pays within one transfer
    # needs only the net amount, and no entry shows it below zero on the way.
    legs = transfer.legs
    if len(legs) == 2 and legs[0].amount < 0 < legs[1].amount:
        ordered: Sequence[Leg] = (legs[1], legs[0])  # the common case, without a sort
    else:
        ordered = sorted(legs, key=_debit_last)
    running: dict[str, int] = {}
    entries: list[Entry] = []
    insufficient = overflow = False
    for leg in ordered:
        account = accounts[leg.account_id]
        before = running.get(leg.account_id, overlay.get(leg.account_id, balances[leg.account_id]))
        after = before + leg.amount
        if leg.amount < 0 and after < 0 and not account.allow_overdraft:
            insufficient = True
        if not limits.balance_min <= after <= limits.balance_max:
            overflow = True
        running[leg.account_id] = after
        entries.append(Entry(transfer.id, leg.account_id, leg.amount, after))
    if insufficient:
        return Rejected(transfer.id, RejectionReason.INSUFFICIENT_FUNDS)
    if overflow:
        return Rejected(transfer.id, RejectionReason.BALANCE_OVERFLOW)
    overlay.update(running)
    return Posted(transfer.id, tuple(entries))
