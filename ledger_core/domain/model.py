"""Transfers, accounts and the rules that post them.

Everything here is pure: the posting worker loads locked rows, hands them to `post_batch`,
and writes back what it returns. Expected failures are values with names; a broken
invariant (an account missing from the locked set, a non-positive amount) raises.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from ledger_core.domain import limits


class TransferKind(StrEnum):
    DEPOSIT = "deposit"
    WITHDRAWAL = "withdrawal"
    TRANSFER = "transfer"


class TransferStatus(StrEnum):
    PENDING = "pending"
    POSTED = "posted"
    REJECTED = "rejected"


class RejectionReason(StrEnum):
    """Why the posting worker refused a transfer that was accepted."""

    INSUFFICIENT_FUNDS = "insufficient_funds"
    # A balance would leave the int64 range the books are stored in.
    BALANCE_OVERFLOW = "balance_overflow"


class AcceptError(StrEnum):
    """Why a request to move money is refused before anything is stored."""

    ACCOUNT_NOT_FOUND = "account_not_found"
    CURRENCY_MISMATCH = "currency_mismatch"
    SAME_ACCOUNT = "same_account"
    SYSTEM_ACCOUNT = "system_account_not_allowed"
    AMOUNT_OUT_OF_RANGE = "invalid_amount"


@dataclass(frozen=True, slots=True)
class AccountState:
    id: str
    currency: str
    balance: int
    allow_overdraft: bool
    # The per-currency counterparty of deposits and withdrawals; clients never name it.
    is_system: bool = False


@dataclass(frozen=True, slots=True)
class TransferToPost:
    id: str
    source_account_id: str
    destination_account_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One side of a posted transfer: negative debits the account, positive credits it."""

    transfer_id: str
    account_id: str
    amount: int
    balance_after: int


@dataclass(frozen=True, slots=True)
class Posted:
    transfer_id: str
    debit: Entry
    credit: Entry


@dataclass(frozen=True, slots=True)
class Rejected:
    transfer_id: str
    reason: RejectionReason


Outcome = Posted | Rejected


@dataclass(frozen=True, slots=True)
class BatchResult:
    outcomes: list[Outcome]
    # Final balance of every account that a posted transfer touched.
    balances: dict[str, int]


def amount_is_valid(amount: object) -> bool:
    # bool is an int subclass in Python; `true` is not an amount.
    return (
        isinstance(amount, int)
        and not isinstance(amount, bool)
        and limits.amount_min <= amount <= limits.amount_max
    )


def check_transfer(
    kind: TransferKind,
    source: AccountState | None,
    destination: AccountState | None,
    amount: int,
) -> AcceptError | None:
    """Accept-time rules: the ones that need no lock and no balance.

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


def post_batch(
    accounts: Mapping[str, AccountState], transfers: Sequence[TransferToPost]
) -> BatchResult:
    """Apply transfers in the order given, each against the balances the previous ones left.

    `accounts` must hold every account the transfers name, read under row locks.
    """
    balances = {account_id: account.balance for account_id, account in accounts.items()}
    touched: dict[str, int] = {}
    outcomes: list[Outcome] = []
    for transfer in transfers:
        # Accept-time checks guarantee these; a violation means corrupted input, so crash.
        if not amount_is_valid(transfer.amount):
            raise ValueError(f"transfer {transfer.id} has an invalid amount {transfer.amount!r}")
        if transfer.source_account_id == transfer.destination_account_id:
            raise ValueError(f"transfer {transfer.id} moves money from an account to itself")
        source = accounts[transfer.source_account_id]
        destination = accounts[transfer.destination_account_id]
        if source.currency != destination.currency:
            raise ValueError(f"transfer {transfer.id} crosses currencies")

        source_after = balances[source.id] - transfer.amount
        destination_after = balances[destination.id] + transfer.amount
        if source_after < 0 and not source.allow_overdraft:
            outcomes.append(Rejected(transfer.id, RejectionReason.INSUFFICIENT_FUNDS))
            continue
        if source_after < limits.balance_min or destination_after > limits.balance_max:
            outcomes.append(Rejected(transfer.id, RejectionReason.BALANCE_OVERFLOW))
            continue

        balances[source.id] = touched[source.id] = source_after
        balances[destination.id] = touched[destination.id] = destination_after
        outcomes.append(
            Posted(
                transfer.id,
                debit=Entry(transfer.id, source.id, -transfer.amount, source_after),
                credit=Entry(transfer.id, destination.id, transfer.amount, destination_after),
            )
        )
    return BatchResult(outcomes=outcomes, balances=touched)
