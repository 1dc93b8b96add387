"""What the ledger stores and shows: accounts, transfers and entries as read back,
and the one JSON representation of each that the API and webhooks both use."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any


def iso_utc(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class AccountRecord:
    id: str
    currency: str
    name: str | None
    metadata: dict[str, str]
    allow_overdraft: bool
    is_system: bool
    posted: int
    # Sums of the amounts of PENDING movements into and out of the account.
    pending_in: int
    pending_out: int
    created_at: datetime
    # What active holds reserve of it, and will bring it.
    held_out: int = 0
    held_in: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "account",
            "currency": self.currency,
            "name": self.name,
            "metadata": self.metadata,
            "allow_overdraft": self.allow_overdraft,
            "is_system": self.is_system,
            "balance": {
                "posted": self.posted,
                # Net effect of movements accepted but not yet posted, and of active holds.
                "pending": self.pending_in - self.pending_out + self.held_in - self.held_out,
                # What may be spent now: incoming money counts once posted, outgoing (and
                # held) at once.
                "available": self.posted - self.pending_out - self.held_out,
            },
            "created_at": iso_utc(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """A movement's row. Two-account kinds are shown as transfers by `to_json`; others
    (NULL accounts, legs elsewhere) as transactions (movement_records.py)."""

    id: str
    kind: str
    status: str
    rejection_reason: str | None
    source_account_id: str | None
    destination_account_id: str | None
    amount: int
    currency: str | None
    description: str | None
    metadata: dict[str, str]
    created_at: datetime | None
    posted_at: datetime | None
    # The batch it was accepted in, if any.
    batch_id: str | None = None

    def as_accepted(self) -> TransferRecord:
        """The transfer as its accept response showed it: what an idempotent replay sends."""
        return replace(self, status="pending", rejection_reason=None, posted_at=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "transfer",
            "kind": self.kind,
            "status": self.status,
            "rejection_reason": self.rejection_reason,
            "source_account_id": self.source_account_id,
            "destination_account_id": self.destination_account_id,
            "amount": self.amount,
            "currency": self.currency,
            "description": self.description,
            "metadata": self.metadata,
            "batch_id": self.batch_id,
            "created_at": iso_utc(self.created_at),
            "posted_at": iso_utc(self.posted_at),
        }


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A POST /v1/transfers/batch request as stored, with its transfers in item order."""

    id: str
    atomic: bool
    created_at: datetime
    items: list[TransferRecord]

    def as_accepted(self) -> BatchRecord:
        return replace(self, items=[item.as_accepted() for item in self.items])

    def to_json(self) -> dict[str, Any]:
        counts = {status: 0 for status in ("pending", "posted", "rejected", "quarantined")}
        for item in self.items:
            counts[item.status] += 1
        return {
            "id": self.id,
            "object": "transfer_batch",
            "atomic": self.atomic,
            # Complete once no item is pending any more (quarantined ones wait for an operator).
            "status": "pending" if counts["pending"] else "completed",
            "counts": counts,
            "created_at": iso_utc(self.created_at),
            "items": [item.to_json() for item in self.items],
        }


@dataclass(frozen=True, slots=True)
class EntryRecord:
    id: int
    transfer_id: str
    account_id: str
    amount: int
    balance_after: int
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": f"ent_{self.id}",
            "object": "entry",
            "transfer_id": self.transfer_id,
            "account_id": self.account_id,
            "amount": self.amount,
            "balance_after": self.balance_after,
            "created_at": iso_utc(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    id: str
    url: str
    events: list[str]
    account_ids: list[str] | None
    description: str | None
    status: str
    disabled_reason: str | None
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    failing_since: datetime | None
    created_at: datetime
    # When it was last disabled (kept once enabled again): re-enabling replays the events
    # finalised since then.
    disabled_at: datetime | None = None

    def to_json(self, *, include_secret: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "webhook_endpoint",
            "url": self.url,
            "events": self.events,
            "account_ids": self.account_ids,
            "description": self.description,
            "status": self.status,
            "disabled_reason": self.disabled_reason,
            "disabled_at": iso_utc(self.disabled_at),
            "created_at": iso_utc(self.created_at),
        }
        if include_secret:
            body["secret"] = self.secret
        return body


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    id: str
    event_id: str
    event_type: str
    endpoint_id: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "webhook_delivery",
            "event_id": self.event_id,
            "event_type": self.event_type,
            "endpoint_id": self.endpoint_id,
            "status": self.status,
            "attempts": self.attempts,
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "next_attempt_at": iso_utc(self.next_attempt_at),
            "created_at": iso_utc(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_milliseconds: int

    def to_json(self) -> dict[str, Any]:
        return {
            "attempted_at": iso_utc(self.attempted_at),
            "status_code": self.status_code,
            "error": self.error,
            "duration_milliseconds": self.duration_milliseconds,
        }
