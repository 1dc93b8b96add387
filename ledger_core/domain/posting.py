"""The posting rules: what a batch of PENDING movements does to accounts read under lock.

Pure: the posting worker loads locked rows, hands them to `post_batch`, and writes back
what it returns. Expected failures are values with names (`Rejected`); a broken invariant
(an account missing from the locked set, legs that do not balance) raises, because it
means the input is corrupt and no outcome would be right.

Balances: `balance` is what the entries sum to (posted); an active hold reserves its
amount: `held_out` of its source, `held_in` of its destination. What an account may
spend is `balance - held_out`: every debit, and every new hold, is checked against it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from ledger_core.domain import limits
from ledger_core.domain.model import (
    HOLD_RELEASING_KINDS,
    HOLD_SETTLING_KINDS,
    AccountState,
    BatchResult,
    Entry,
    Held,
    HoldChange,
    HoldState,
    HoldStatus,
    Leg,
    OriginalState,
    Outcome,
    Posted,
    Rejected,
    RejectionReason,
    Released,
    TransferKind,
    TransferToPost,
)
from ledger_core.domain.rules import debited


@dataclass
class _Books:
    """What the movements of a batch change, layered: a unit works on a copy, and only a
    unit that posts whole is folded into the batch's books."""

    balances: dict[str, int]
    held: dict[str, tuple[int, int]]
    holds: dict[str, HoldChange] = field(default_factory=dict)
    reversed: dict[str, int] = field(default_factory=dict)

    def copy(self) -> _Books:
        return _Books(dict(self.balances), dict(self.held), dict(self.holds), dict(self.reversed))


def post_batch(
    accounts: Mapping[str, AccountState],
    transfers: Sequence[TransferToPost],
    *,
    holds: Mapping[str, HoldState] | None = None,
    originals: Mapping[str, OriginalState] | None = None,
) -> BatchResult:
    """Apply movements in the order given, each against the balances the previous ones left.

    Each movement has its own outcome: a rejection never undoes its neighbours, except
    inside an atomic group (consecutive movements sharing a `group_id`), which posts
    whole or not at all. `accounts` must hold every account the movements name, `holds`
    every hold they settle or release, `originals` every movement they reverse.
    """
    holds = holds or {}
    originals = originals or {}
    books = _Books(
        {account_id: a.balance for account_id, a in accounts.items()},
        {account_id: (a.held_out, a.held_in) for account_id, a in accounts.items()},
    )
    touched: set[str] = set()
    held_touched: set[str] = set()
    outcomes: list[Outcome] = []
    for unit in _units(transfers):
        working = books.copy()
        unit_touched: set[str] = set()
        unit_held: set[str] = set()
        unit_outcomes: list[Outcome] = []
        rejection: Rejected | None = None
        for transfer in unit:
            outcome = _apply(
                transfer,
                accounts,
                holds=holds,
                originals=originals,
                books=working,
                touched=unit_touched,
                held_touched=unit_held,
            )
            if isinstance(outcome, Rejected):
                rejection = outcome
                break
            unit_outcomes.append(outcome)
        if rejection is not None:
            outcomes += _reject_group(unit, rejection) if len(unit) > 1 else [rejection]
            books.holds.update(rejected_hold_changes(unit, holds))
            continue
        books = working
        touched |= unit_touched
        held_touched |= unit_held
        outcomes += unit_outcomes
    return BatchResult(
        outcomes=outcomes,
        balances={a: books.balances[a] for a in touched},
        held={a: books.held[a] for a in held_touched},
        holds=books.holds,
        reversed=books.reversed,
    )


def rejected_hold_changes(
    transfers: Sequence[TransferToPost], holds: Mapping[str, HoldState]
) -> dict[str, HoldChange]:
    """What rejecting these movements does to holds, the one change a rejection leaves: a
    rejected hold is rejected; a rejected capture, void or expiry gives its hold back to
    other actions. `holds` are those the actions act on, read under their locks."""
    changes: dict[str, HoldChange] = {}
    for transfer in transfers:
        if transfer.kind is TransferKind.HOLD:
            changes[transfer.id] = HoldChange(HoldStatus.REJECTED)
        elif transfer.hold_id is not None:
            hold = holds.get(transfer.hold_id)
            if hold is not None and hold.action_id == transfer.id:
                changes[transfer.hold_id] = HoldChange(hold.status, action_cleared=True)
    return changes


def _units(transfers: Sequence[TransferToPost]) -> Iterator[Sequence[TransferToPost]]:
    """Single movements, and atomic groups as one unit each."""
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


def _debit_last(indexed: tuple[int, Leg]) -> bool:
    return indexed[1].amount < 0


def _apply(
    transfer: TransferToPost,
    accounts: Mapping[str, AccountState],
    *,
    holds: Mapping[str, HoldState],
    originals: Mapping[str, OriginalState],
    books: _Books,
    touched: set[str],
    held_touched: set[str],
) -> Outcome:
    """Apply one movement to `books`, or say why not (then `books` is to be discarded)."""
    _check_legs(transfer, accounts)
    if transfer.kind is TransferKind.HOLD:
        return _reserve(transfer, accounts, books, held_touched)
    if transfer.kind in HOLD_SETTLING_KINDS or transfer.kind in HOLD_RELEASING_KINDS:
        hold = holds.get(transfer.hold_id or "")
        if hold is None:
            raise ValueError(f"transfer {transfer.id} names unlocked hold {transfer.hold_id}")
        if hold.status != HoldStatus.ACTIVE or hold.action_id != transfer.id:
            return Rejected(transfer.id, RejectionReason.HOLD_NOT_ACTIVE)
        _release(hold, books, held_touched)
        if transfer.kind in HOLD_RELEASING_KINDS:
            status = HoldStatus.VOIDED if transfer.kind is TransferKind.VOID else HoldStatus.EXPIRED
            books.holds[hold.id] = HoldChange(status)
            return Released(transfer.id)
        books.holds[hold.id] = HoldChange(HoldStatus.CAPTURED, debited(transfer.legs))
    if transfer.reverses_id is not None:
        original = originals.get(transfer.reverses_id)
        if original is None:
            raise ValueError(f"reversal {transfer.id} names unlocked {transfer.reverses_id}")
        reversed_before = books.reversed.get(original.id, original.reversed_amount)
        if reversed_before + transfer.reversal_amount > original.amount:
            return Rejected(transfer.id, RejectionReason.REVERSAL_EXCEEDS_ORIGINAL)
        books.reversed[original.id] = reversed_before + transfer.reversal_amount
    return _post_legs(transfer, accounts, books, touched)


def _spendable(account: AccountState, books: _Books) -> int:
    return books.balances[account.id] - books.held[account.id][0]


def _reserve(
    transfer: TransferToPost,
    accounts: Mapping[str, AccountState],
    books: _Books,
    held_touched: set[str],
) -> Outcome:
    """A hold: what its legs would debit is reserved, what they would credit is expected."""
    for leg in transfer.legs:
        account = accounts[leg.account_id]
        held_out, held_in = books.held[leg.account_id]
        if leg.amount < 0:
            if _spendable(account, books) + leg.amount < 0 and not account.allow_overdraft:
                return Rejected(transfer.id, RejectionReason.INSUFFICIENT_FUNDS, leg.account_id)
            held_out -= leg.amount
        else:
            held_in += leg.amount
        if max(held_out, held_in) > limits.balance_max:
            return Rejected(transfer.id, RejectionReason.BALANCE_OVERFLOW, leg.account_id)
        books.held[leg.account_id] = (held_out, held_in)
        held_touched.add(leg.account_id)
    books.holds[transfer.id] = HoldChange(HoldStatus.ACTIVE)
    return Held(transfer.id)


def _release(hold: HoldState, books: _Books, held_touched: set[str]) -> None:
    """Give back what a hold reserved: the rest of it, after a partial capture too."""
    for account_id, index in ((hold.source_account_id, 0), (hold.destination_account_id, 1)):
        held = list(books.held[account_id])
        held[index] -= hold.amount
        if held[index] < 0:
            raise ValueError(f"hold {hold.id} releases more than {account_id} holds")
        books.held[account_id] = (held[0], held[1])
        held_touched.add(account_id)


def _post_legs(
    transfer: TransferToPost,
    accounts: Mapping[str, AccountState],
    books: _Books,
    touched: set[str],
) -> Outcome:
    # Credits before debits: an account that both receives and pays within one movement
    # needs only the net amount, and no entry shows it below zero on the way.
    legs = transfer.legs
    if len(legs) == 2 and legs[0].amount < 0 < legs[1].amount:
        ordered: Sequence[tuple[int, Leg]] = ((1, legs[1]), (0, legs[0]))  # without a sort
    else:
        ordered = sorted(enumerate(legs), key=_debit_last)
    entries: list[Entry] = []
    # The first account that refuses it (in posting order), for the rejection.
    insufficient: str | None = None
    overflow: str | None = None
    for index, leg in ordered:
        account = accounts[leg.account_id]
        after = books.balances[leg.account_id] + leg.amount
        # What active holds reserve cannot be spent.
        spendable_after = after - books.held[leg.account_id][0]
        if leg.amount < 0 and spendable_after < 0 and not account.allow_overdraft:
            insufficient = insufficient or leg.account_id
        if not limits.balance_min <= after <= limits.balance_max:
            overflow = overflow or leg.account_id
        books.balances[leg.account_id] = after
        touched.add(leg.account_id)
        entries.append(Entry(transfer.id, leg.account_id, leg.amount, after, index))
    if insufficient:
        return Rejected(transfer.id, RejectionReason.INSUFFICIENT_FUNDS, insufficient)
    if overflow:
        return Rejected(transfer.id, RejectionReason.BALANCE_OVERFLOW, overflow)
    return Posted(transfer.id, tuple(entries))
