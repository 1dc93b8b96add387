"""The ledger's vocabulary: accounts as the posting worker sees them, transfers to post,
entries, and the named outcomes of accepting and posting.

Everything here is pure data. The rules live beside it: `rules.py` decides what may be
accepted, `posting.py` what a batch of locked accounts and transfers becomes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class TransferKind(StrEnum):
    """What a movement is. The first three are the two-entry transfers of the API's first
    version; every kind is posted by the same posting path."""

    DEPOSIT = "deposit"
    WITHDRAWAL = "withdrawal"
    TRANSFER = "transfer"
    # N entries, summing to zero per currency.
    TRANSACTION = "transaction"
    # Customer to merchant, with its cashback from a rewards account in the same entries.
    PAYMENT = "payment"
    # Reserves funds: lowers the source's available balance, moves nothing yet.
    HOLD = "hold"
    # Settle a hold (all or part of it; the rest is released).
    CAPTURE = "capture"
    # The delayed cashback of a payment, a hold captured when its delay has passed.
    CASHBACK = "cashback"
    # Release a hold: asked for, or because it expired.
    VOID = "void"
    EXPIRE = "expire"
    # The opposite entries of a posted movement, in whole or in part.
    REVERSAL = "reversal"


# The kinds whose JSON is the two-account transfer of the first version.
TWO_ACCOUNT_KINDS = frozenset(
    {TransferKind.DEPOSIT, TransferKind.WITHDRAWAL, TransferKind.TRANSFER}
)
# What posting a movement of each kind does.
HOLD_SETTLING_KINDS = frozenset({TransferKind.CAPTURE, TransferKind.CASHBACK})
HOLD_RELEASING_KINDS = frozenset({TransferKind.VOID, TransferKind.EXPIRE})


class HoldStatus(StrEnum):
    PENDING = "pending"  # accepted; the worker has not reserved the funds yet
    ACTIVE = "active"  # funds reserved
    CAPTURED = "captured"
    VOIDED = "voided"
    EXPIRED = "expired"
    REJECTED = "rejected"  # the funds were not there


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
    # The hold to settle or release is no longer active (already captured, voided, expired)
    # or another action on it came first.
    HOLD_NOT_ACTIVE = "hold_not_active"
    # With the reversals posted before it, this one would reverse more than the original.
    REVERSAL_EXCEEDS_ORIGINAL = "reversal_exceeds_original"
    # Quarantined, then rejected by an operator: it never posted and never will.
    POSTING_FAILED = "posting_failed"


class AcceptError(StrEnum):
    """Why a request to move money is refused before anything is stored."""

    ACCOUNT_NOT_FOUND = "account_not_found"
    CURRENCY_MISMATCH = "currency_mismatch"
    SAME_ACCOUNT = "same_account"
    SYSTEM_ACCOUNT = "system_account_not_allowed"
    AMOUNT_OUT_OF_RANGE = "invalid_amount"
    UNBALANCED = "unbalanced"
    TOO_MANY_ENTRIES = "too_many_entries"
    # A cashback rate, a cashback delay or a hold's expiry outside its limits.
    OUT_OF_BOUNDS = "validation_error"


@dataclass(frozen=True, slots=True)
class AccountFacts:
    """What never changes about an account once it is open, so it may be cached."""

    id: str
    currency: str
    allow_overdraft: bool
    # The per-currency counterparty of deposits and withdrawals; clients never name it.
    is_system: bool = False
    # Whose money it is: the owner of the API key that opened it (`domain/access.py`).
    # None for system accounts and for accounts opened before owners existed.
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class AccountState:
    """An account read under its row lock, as posting needs it. `held_out` is what active
    holds reserve of it, `held_in` what they will bring it."""

    id: str
    currency: str
    balance: int
    allow_overdraft: bool
    is_system: bool = False
    held_out: int = 0
    held_in: int = 0


@dataclass(frozen=True, slots=True)
class HoldState:
    """A hold read under its row lock. `action_id` is the one movement allowed to settle
    or release it: the API (or beat, for expiry and cashback) claims that right first."""

    id: str
    status: str
    amount: int
    source_account_id: str
    destination_account_id: str
    action_id: str | None


@dataclass(frozen=True, slots=True)
class OriginalState:
    """A posted movement being reversed, read under its row lock."""

    id: str
    amount: int
    reversed_amount: int


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
    kind: TransferKind = TransferKind.TRANSFER
    # For a hold's own movement, its capture, cashback, void or expiry: the hold.
    hold_id: str | None = None
    # For a reversal: what it reverses, and how much of the original's amount.
    reverses_id: str | None = None
    reversal_amount: int = 0

    @classmethod
    def between(
        cls,
        id: str,
        source: str,
        destination: str,
        amount: int,
        group_id: str | None = None,
        *,
        kind: TransferKind = TransferKind.TRANSFER,
        hold_id: str | None = None,
        reverses_id: str | None = None,
        reversal_amount: int = 0,
    ) -> TransferToPost:
        legs = (Leg(source, -amount), Leg(destination, amount))
        return cls(id, legs, group_id, kind, hold_id, reverses_id, reversal_amount)


@dataclass(frozen=True, slots=True)
class Entry:
    """One side of a posted transfer: negative debits the account, positive credits it."""

    transfer_id: str
    account_id: str
    amount: int
    balance_after: int
    # Its leg's position in the movement: one entry per leg (an account may appear twice).
    leg: int = 0


@dataclass(frozen=True, slots=True)
class Posted:
    transfer_id: str
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class Held:
    """A hold's funds are reserved (its movement posted, with no entries)."""

    transfer_id: str


@dataclass(frozen=True, slots=True)
class Released:
    """A hold was voided or expired (its movement posted, with no entries)."""

    transfer_id: str


@dataclass(frozen=True, slots=True)
class Rejected:
    transfer_id: str
    reason: RejectionReason
    # The account whose rule refused it (overdraft, balance bounds), when there is one.
    account_id: str | None = None


Outcome = Posted | Held | Released | Rejected
# Outcomes that finalise a movement as posted.
POSTED_OUTCOMES = (Posted, Held, Released)


@dataclass(frozen=True, slots=True)
class HoldChange:
    """What becomes of a hold: its status, what was captured, and whether its pending
    action is cleared (a capture that was rejected leaves the hold to another action)."""

    status: str
    captured_amount: int = 0
    action_cleared: bool = False


@dataclass(frozen=True, slots=True)
class BatchResult:
    # One outcome per transfer, in the order the transfers were given.
    outcomes: list[Outcome]
    # Final balance of every account that a posted transfer touched.
    balances: dict[str, int]
    # Final (held_out, held_in) of every account whose holds changed.
    held: dict[str, tuple[int, int]] = field(default_factory=dict)
    holds: dict[str, HoldChange] = field(default_factory=dict)
    # New reversed amount of every original a posted reversal reversed.
    reversed: dict[str, int] = field(default_factory=dict)
