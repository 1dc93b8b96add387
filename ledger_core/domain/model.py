"""The ledger's vocabulary: accounts as the posting worker sees them, transfers to post,
entries, and the named outcomes of accepting and posting.

Everything here is pure data. The rules live beside it: `rules.py` decides what may be
accepted, `posting.py` what a batch of locked accounts and transfers becomes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class TransferKind(StrEnum):
    DEPOSIT = "deposit"
    WITHDRAWAL = "withdrawal"
    TRANSFER = "transfer"


class TransferStatus(StrEnum):
    PENDING = "pending"
    POSTED = "posted"
    REJECTED = "rejected"
    # Posting failed `posting_attempts_max` times for a reason that was not the money
    # (a bug, a corrupted row): nothing moved, and an operator decides what happens next.
    QUARANTINED = "quarantined"


class RejectionReason(StrEnum):
    """Why the posting worker refused a transfer that was accepted."""

    INSUFFICIENT_FUNDS = "insufficient_funds"
    # A balance would leave the 128-bit range the books are stored in.
    BALANCE_OVERFLOW = "balance_overflow"
    # Another transfer of the same atomic batch was rejected, so this one was too.
    LINKED_TRANSFER_FAILED = "linked_transfer_failed"
    # Quarantined, then rejected by an operator: it never posted and never will.
    POSTING_FAILED = "posting_failed"


class AcceptError(StrEnum):
    """Why a request to move money is refused before anything is stored."""

    ACCOUNT_NOT_FOUND = "account_not_found"
    CURRENCY_MISMATCH = "currency_mismatch"
    SAME_ACCOUNT = "same_account"
    SYSTEM_ACCOUNT = "system_account_not_allowed"
    AMOUNT_OUT_OF_RANGE = "invalid_amount"


@dataclass(frozen=True, slots=True)
class AccountFacts:
    """What never changes about an account once it is open, so it may be cached."""

    id: str
    currency: str
    allow_overdraft: bool
    # The per-currency counterparty of deposits and withdrawals; clients never name it.
    is_system: bool = False


@dataclass(frozen=True, slots=True)
class AccountState:
    """An account read under its row lock, as posting needs it."""

    id: str
    currency: str
    balance: int
    allow_overdraft: bool
    is_system: bool = False


@dataclass(frozen=True, slots=True)
class Leg:
    """One planned entry: a negative amount debits the account, a positive one credits it."""

    account_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class TransferToPost:
    """A PENDING transfer as the posting worker claimed it.

    `group_id` is set for the transfers of an atomic batch: they post together or are
    all rejected together.
    """

    id: str
    legs: tuple[Leg, ...]
    group_id: str | None = None

    @classmethod
    def between(
        cls, id: str, source: str, destination: str, amount: int, group_id: str | None = None
    ) -> TransferToPost:
        return cls(id, (Leg(source, -amount), Leg(destination, amount)), group_id)


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
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    transfer_id: str
    reason: RejectionReason


Outcome = Posted | Rejected


@dataclass(frozen=True, slots=True)
class BatchResult:
    # One outcome per transfer, in the order the transfers were given.
    outcomes: list[Outcome]
    # Final balance of every account that a posted transfer touched.
    balances: dict[str, int]
