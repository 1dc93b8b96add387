"""Movements as the API shows them beyond the two-account transfer: any movement as a
transaction with its entries, holds, and payments with their cashback."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from ledger_core.domain.records import iso_utc


@dataclass(frozen=True, slots=True)
class EntryView:
    """One leg of a movement: planned while it is pending, with its balance once posted."""

    account_id: str
    amount: int
    currency: str
    balance_after: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "amount": self.amount,
            "currency": self.currency,
            "balance_after": self.balance_after,
        }


@dataclass(frozen=True, slots=True)
class TransactionRecord:
    """Any movement (a transfer, a transaction, a payment, a hold and its settlement, a
    reversal) as N signed entries that sum to zero per currency."""

    id: str
    kind: str
    status: str
    rejection_reason: str | None
    entries: list[EntryView]
    amount: int
    currency: str | None
    description: str | None
    metadata: dict[str, str]
    effective_at: datetime | None
    created_at: datetime | None
    posted_at: datetime | None
    batch_id: str | None = None
    hold_id: str | None = None
    reverses_id: str | None = None
    reversed_amount: int = 0
    reversed_by_ids: list[str] = field(default_factory=list)
    rejected_account_id: str | None = None

    def as_accepted(self) -> TransactionRecord:
        """The movement as its accept response showed it: what an idempotent replay sends."""
        return replace(
            self,
            status="pending",
            rejection_reason=None,
            rejected_account_id=None,
            posted_at=None,
            entries=[replace(e, balance_after=None) for e in self.entries],
            reversed_amount=0,
            reversed_by_ids=[],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "transaction",
            "kind": self.kind,
            "status": self.status,
            "rejection_reason": self.rejection_reason,
            "rejected_account_id": self.rejected_account_id,
            "entries": [entry.to_json() for entry in self.entries],
            "amount": self.amount,
            "currency": self.currency,
            "description": self.description,
            "metadata": self.metadata,
            "effective_at": iso_utc(self.effective_at),
            "batch_id": self.batch_id,
            "hold_id": self.hold_id,
            "reverses_id": self.reverses_id,
            "reversed_amount": self.reversed_amount,
            "reversed_by_ids": self.reversed_by_ids,
            "created_at": iso_utc(self.created_at),
            "posted_at": iso_utc(self.posted_at),
        }


@dataclass(frozen=True, slots=True)
class HoldRecord:
    id: str
    status: str
    source_account_id: str
    destination_account_id: str
    amount: int
    captured_amount: int
    currency: str
    action_id: str | None
    expires_at: datetime | None
    capture_at: datetime | None
    created_at: datetime

    def as_accepted(self) -> HoldRecord:
        """The hold as its accept response showed it: what an idempotent replay sends."""
        return replace(self, status="pending", captured_amount=0, action_id=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "hold",
            "status": self.status,
            "source_account_id": self.source_account_id,
            "destination_account_id": self.destination_account_id,
            "amount": self.amount,
            "captured_amount": self.captured_amount,
            "currency": self.currency,
            # The capture, void or expiry that acts on it, once one is accepted.
            "action_id": self.action_id,
            "expires_at": iso_utc(self.expires_at),
            "capture_at": iso_utc(self.capture_at),
            "created_at": iso_utc(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    id: str
    status: str
    rejection_reason: str | None
    customer_account_id: str
    merchant_account_id: str
    amount: int
    currency: str
    rewards_account_id: str | None
    basis_points: int | None
    cashback_amount: int
    # The hold that releases a delayed cashback, and its state.
    cashback_hold_id: str | None
    cashback_status: str
    description: str | None
    metadata: dict[str, str]
    created_at: datetime | None
    posted_at: datetime | None
    reversed_amount: int = 0

    def as_accepted(self) -> PaymentRecord:
        pending = "pending" if self.cashback_amount else "none"
        return replace(
            self,
            status="pending",
            rejection_reason=None,
            posted_at=None,
            cashback_status=pending,
            reversed_amount=0,
        )

    def to_json(self) -> dict[str, Any]:
        cashback = None
        if self.rewards_account_id is not None:
            cashback = {
                "rewards_account_id": self.rewards_account_id,
                "basis_points": self.basis_points,
                "amount": self.cashback_amount,
                "hold_id": self.cashback_hold_id,
                # pending until it posts (with the payment, or when its delay has passed).
                "status": self.cashback_status,
            }
        return {
            "id": self.id,
            "object": "payment",
            "status": self.status,
            "rejection_reason": self.rejection_reason,
            "customer_account_id": self.customer_account_id,
            "merchant_account_id": self.merchant_account_id,
            "amount": self.amount,
            "currency": self.currency,
            "cashback": cashback,
            "description": self.description,
            "metadata": self.metadata,
            "reversed_amount": self.reversed_amount,
            "created_at": iso_utc(self.created_at),
            "posted_at": iso_utc(self.posted_at),
        }
