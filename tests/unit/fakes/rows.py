"""The rows of the tables, and `State`: every table of one snapshot."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger_core.domain.access import ApiKeyRecord
from ledger_core.domain.model import HoldState, HoldStatus, Leg
from ledger_core.domain.movement_records import HoldRecord
from ledger_core.domain.records import EndpointRecord, EntryRecord, TransferRecord
from ledger_core.domain.webhooks import DeliveryStatus, EndpointStatus
from ledger_core.service_layer.ports import ClaimedTransfer


@dataclass
class AccountRow:
    id: str
    currency: str
    name: str | None
    metadata: dict[str, str]
    allow_overdraft: bool
    is_system: bool
    balance: int
    created_at: datetime
    # What active holds reserve of it, and will bring it.
    held_out: int = 0
    held_in: int = 0
    owner: str | None = None


@dataclass
class TransferRow:
    id: str
    seq: int
    kind: str
    # NULL for a transaction, a payment or a reversal: their legs are in State.legs.
    source_account_id: str | None
    destination_account_id: str | None
    amount: int
    # NULL for a transaction across currencies.
    currency: str | None
    description: str | None
    metadata: dict[str, str]
    api_key_id: str
    created_at: datetime
    status: str = "pending"
    rejection_reason: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    batch_id: str | None = None
    group_id: str | None = None
    shard: int = 0
    posting_attempts: int = 0
    posting_retry_at: datetime | None = None
    posting_error: str | None = None
    posted_at: datetime | None = None
    finalized_at: datetime | None = None
    hold_id: str | None = None
    reverses_id: str | None = None
    reversal_amount: int | None = None
    reversed_amount: int = 0
    effective_at: datetime | None = None
    rejected_account_id: str | None = None

    @property
    def claimable(self) -> bool:
        # ix_transfers_claimable's predicate: PENDING single transfers and group heads.
        return self.status == "pending" and (self.group_id is None or self.group_id == self.id)

    def claimed(self, legs: Sequence[Leg] = ()) -> ClaimedTransfer:
        return ClaimedTransfer(
            self.id,
            self.source_account_id,
            self.destination_account_id,
            self.amount,
            self.group_id,
            self.created_at,
            self.kind,
            self.hold_id,
            self.reverses_id,
            self.reversal_amount or 0,
            tuple(legs),
        )

    def record(self) -> TransferRecord:
        return TransferRecord(
            id=self.id,
            kind=self.kind,
            status=self.status,
            rejection_reason=self.rejection_reason,
            source_account_id=self.source_account_id,
            destination_account_id=self.destination_account_id,
            amount=self.amount,
            currency=self.currency,
            description=self.description,
            metadata=copy.deepcopy(self.metadata),
            created_at=self.created_at,
            posted_at=self.posted_at,
            batch_id=self.batch_id,
        )


@dataclass
class HoldRow:
    id: str
    source_account_id: str
    destination_account_id: str
    amount: int
    currency: str
    created_at: datetime
    status: str = HoldStatus.PENDING.value
    action_id: str | None = None
    captured_amount: int = 0
    expires_at: datetime | None = None
    capture_at: datetime | None = None

    def record(self) -> HoldRecord:
        return HoldRecord(
            id=self.id,
            status=self.status,
            source_account_id=self.source_account_id,
            destination_account_id=self.destination_account_id,
            amount=self.amount,
            captured_amount=self.captured_amount,
            currency=self.currency,
            action_id=self.action_id,
            expires_at=self.expires_at,
            capture_at=self.capture_at,
            created_at=self.created_at,
        )

    def state(self) -> HoldState:
        return HoldState(
            self.id,
            self.status,
            self.amount,
            self.source_account_id,
            self.destination_account_id,
            self.action_id,
        )

    def claimable_by_action(self, unexpired_at: datetime | None) -> bool:
        # CLAIM_ACTION's WHERE clause.
        return (
            self.status == HoldStatus.ACTIVE.value
            and self.action_id is None
            and (unexpired_at is None or self.expires_at is None or self.expires_at > unexpired_at)
        )

    def due(self, now: datetime) -> str | None:
        """DUE_HOLDS: what is due of an active hold with no action, if anything."""
        if self.status != HoldStatus.ACTIVE.value or self.action_id is not None:
            return None
        if self.capture_at is not None and self.capture_at <= now:
            return "cashback"
        if self.expires_at is not None and self.expires_at <= now:
            return "expire"
        return None


@dataclass
class PaymentRow:
    id: str
    customer_account_id: str
    merchant_account_id: str
    amount: int
    rewards_account_id: str | None
    basis_points: int | None
    cashback_amount: int
    cashback_hold_id: str | None


@dataclass
class BatchRow:
    id: str
    api_key_id: str
    idempotency_key: str
    request_hash: str
    atomic: bool
    item_count: int
    created_at: datetime


@dataclass
class IdempotencyRow:
    request_hash: str
    status_code: int
    response_body: dict[str, Any]
    created_at: datetime


@dataclass
class ApiKeyRow:
    id: str
    name: str
    scope: str
    key_hash: bytes
    owner: str
    created_at: datetime
    revoked_at: datetime | None = None
    expires_at: datetime | None = None

    def record(self) -> ApiKeyRecord:
        return ApiKeyRecord(
            self.id,
            self.name,
            self.scope,
            self.owner,
            self.created_at,
            self.expires_at,
            self.revoked_at,
        )


@dataclass
class EndpointRow:
    id: str
    url: str
    events: list[str]
    account_ids: list[str] | None
    description: str | None
    secret: str
    created_at: datetime
    status: str = EndpointStatus.ENABLED.value
    disabled_reason: str | None = None
    previous_secret: str | None = None
    previous_secret_expires_at: datetime | None = None
    last_success_at: datetime | None = None
    failing_since: datetime | None = None
    deleted_at: datetime | None = None
    disabled_at: datetime | None = None

    def record(self) -> EndpointRecord:
        return EndpointRecord(
            id=self.id,
            url=self.url,
            events=list(self.events),
            account_ids=None if self.account_ids is None else list(self.account_ids),
            description=self.description,
            status=self.status,
            disabled_reason=self.disabled_reason,
            secret=self.secret,
            previous_secret=self.previous_secret,
            previous_secret_expires_at=self.previous_secret_expires_at,
            failing_since=self.failing_since,
            created_at=self.created_at,
            disabled_at=self.disabled_at,
        )


@dataclass
class EventRow:
    id: str
    type: str
    transfer_id: str
    payload: str
    created_at: datetime
    # clock_timestamp() of the insert in PostgreSQL; None here reads as created_at (the
    # fake's clock stands still within a posting).
    recorded_at: datetime | None = None


@dataclass
class DeliveryRow:
    id: str
    event_id: str
    endpoint_id: str
    next_attempt_at: datetime | None
    enqueued_until: datetime | None
    created_at: datetime
    status: str = DeliveryStatus.PENDING.value
    attempts: int = 0
    leased_until: datetime | None = None
    lease_token: str | None = None
    last_status_code: int | None = None
    last_error: str | None = None


@dataclass
class AttemptRow:
    id: int
    delivery_id: str
    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_milliseconds: int


@dataclass
class State:
    """The tables. Dicts keep insertion order; ids sort as the SQL's ORDER BY id does."""

    accounts: dict[str, AccountRow] = field(default_factory=dict)
    transfers: dict[str, TransferRow] = field(default_factory=dict)
    batches: dict[str, BatchRow] = field(default_factory=dict)
    entries: list[EntryRecord] = field(default_factory=list)
    # entries.leg, by entry id: EntryRecord does not carry it.
    entry_legs: dict[int, int] = field(default_factory=dict)
    # transfer_legs, by transfer id in leg order: written once, never changed.
    legs: dict[str, tuple[Leg, ...]] = field(default_factory=dict)
    holds: dict[str, HoldRow] = field(default_factory=dict)
    payments: dict[str, PaymentRow] = field(default_factory=dict)
    idempotency: dict[tuple[str, str], IdempotencyRow] = field(default_factory=dict)
    api_keys: dict[str, ApiKeyRow] = field(default_factory=dict)
    custom_currencies: dict[str, int] = field(default_factory=dict)
    endpoints: dict[str, EndpointRow] = field(default_factory=dict)
    events: dict[str, EventRow] = field(default_factory=dict)
    deliveries: dict[str, DeliveryRow] = field(default_factory=dict)
    attempts: list[AttemptRow] = field(default_factory=list)

    def clone(self) -> State:
        """A copy whose rows can be changed without touching these. Rows hold immutable
        values (or JSON that is replaced, never changed in place), so a shallow copy of
        each row is enough, and much faster than deepcopy."""
        return State(
            accounts={k: copy.copy(v) for k, v in self.accounts.items()},
            transfers={k: copy.copy(v) for k, v in self.transfers.items()},
            batches={k: copy.copy(v) for k, v in self.batches.items()},
            entries=list(self.entries),
            entry_legs=dict(self.entry_legs),
            legs=dict(self.legs),
            holds={k: copy.copy(v) for k, v in self.holds.items()},
            payments={k: copy.copy(v) for k, v in self.payments.items()},
            idempotency={k: copy.copy(v) for k, v in self.idempotency.items()},
            api_keys={k: copy.copy(v) for k, v in self.api_keys.items()},
            custom_currencies=dict(self.custom_currencies),
            endpoints={k: copy.copy(v) for k, v in self.endpoints.items()},
            events={k: copy.copy(v) for k, v in self.events.items()},
            deliveries={k: copy.copy(v) for k, v in self.deliveries.items()},
            attempts=list(self.attempts),
        )

    def by_seq(self) -> list[TransferRow]:
        return sorted(self.transfers.values(), key=lambda t: t.seq)
