"""Request and response shapes. The same models validate requests and generate /openapi.json."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from ledger_core.domain import limits


def _check_metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > limits.metadata_keys_max:
        raise ValueError(f"at most {limits.metadata_keys_max} keys")
    for key, item in value.items():
        if not 1 <= len(key) <= limits.metadata_key_length_max:
            raise ValueError(f"keys are 1 to {limits.metadata_key_length_max} characters")
        if len(item) > limits.metadata_value_length_max:
            raise ValueError(f"values are at most {limits.metadata_value_length_max} characters")
    return value


Metadata = Annotated[
    dict[str, str],
    AfterValidator(_check_metadata),
    Field(description="Your own key-value pairs, stored and returned as given."),
]
# Strict: a JSON string "100" or a float 100.0 is not an amount.
Amount = Annotated[
    int,
    Field(
        strict=True,
        ge=limits.amount_min,
        le=limits.amount_max,
        description="Integer in the currency's minor unit (cents for USD).",
    ),
]
Description = Annotated[str | None, Field(max_length=limits.description_length_max)]
AccountId = Annotated[str, Field(min_length=1, max_length=64)]


# PostgreSQL text and jsonb cannot hold U+0000, and UTF-8 cannot encode a lone surrogate
# (JSON lets a client send both as escapes): refused here, or the INSERT fails with a 500.
UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")


def _unstorable(value: Any) -> bool:
    """Whether a string anywhere in `value` (dict keys included) cannot be stored."""
    if isinstance(value, str):
        return UNSTORABLE_TEXT.search(value) is not None
    if isinstance(value, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_unstorable(item) for item in value)
    return False  # numbers, booleans, None; nested request models check their own fields


class _Request(BaseModel):
    # Unknown fields are errors: a misspelt "ammount" must not be silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True)

    # Every field of every request model, so that a new text field cannot forget it.
    @field_validator("*")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        if _unstorable(value):
            raise ValueError("text must not contain U+0000 (NUL) or an unpaired surrogate")
        return value


class AccountCreate(_Request):
    currency: str = Field(
        min_length=1, max_length=16, description="ISO 4217 code or an operator's custom unit."
    )
    name: str | None = Field(default=None, max_length=limits.name_length_max)
    metadata: Metadata = Field(default_factory=dict)
    allow_overdraft: bool = Field(
        default=False, description="May go below zero. Needs an admin key (403 `forbidden`)."
    )


class MoneyMovement(_Request):
    account_id: AccountId
    amount: Amount
    description: Description = None
    metadata: Metadata = Field(default_factory=dict)


class TransferCreate(_Request):
    source_account_id: AccountId
    destination_account_id: AccountId
    amount: Amount
    description: Description = None
    metadata: Metadata = Field(default_factory=dict)


class DepositItem(MoneyMovement):
    kind: Literal["deposit"]


class WithdrawalItem(MoneyMovement):
    kind: Literal["withdrawal"]


class TransferItem(TransferCreate):
    kind: Literal["transfer"]


BatchItem = Annotated[DepositItem | WithdrawalItem | TransferItem, Field(discriminator="kind")]


class BatchCreate(_Request):
    atomic: bool = Field(
        default=False,
        description="All items post, or all are rejected together (a linked group).",
    )
    items: list[BatchItem] = Field(
        min_length=1,
        description=f"1 to {limits.batch_items_max} deposits, withdrawals and transfers.",
    )


class Balance(BaseModel):
    posted: int = Field(description="Sum of the account's entries (at `as_of`, if asked).")
    pending: int | None = Field(
        description="Net of accepted movements not yet posted and of active holds (in"
        " minus out); null for a balance in the past."
    )
    available: int | None = Field(
        description="posted minus outgoing pending movements and what active holds"
        " reserve; null for a balance in the past."
    )


class Account(BaseModel):
    id: str
    object: Literal["account"]
    currency: str
    name: str | None
    metadata: dict[str, str]
    allow_overdraft: bool
    is_system: bool
    balance: Balance
    created_at: str
    as_of: str | None = Field(default=None, description="Set when a past balance was asked.")


class Transfer(BaseModel):
    id: str
    object: Literal["transfer"]
    kind: Literal["deposit", "withdrawal", "transfer"]
    status: Literal["pending", "posted", "rejected", "quarantined"]
    rejection_reason: (
        Literal[
            "insufficient_funds", "balance_overflow", "linked_transfer_failed", "posting_failed"
        ]
        | None
    )
    source_account_id: str
    destination_account_id: str
    amount: int
    currency: str
    description: str | None
    metadata: dict[str, str]
    batch_id: str | None
    created_at: str
    posted_at: str | None


class BatchCounts(BaseModel):
    pending: int
    posted: int
    rejected: int
    quarantined: int


class TransferBatch(BaseModel):
    id: str
    object: Literal["transfer_batch"]
    atomic: bool
    status: Literal["pending", "completed"] = Field(
        description="completed once no item is pending."
    )
    counts: BatchCounts
    created_at: str
    items: list[Transfer]


class Entry(BaseModel):
    id: str
    object: Literal["entry"]
    transfer_id: str
    account_id: str
    amount: int = Field(description="Signed: negative debits this account.")
    balance_after: int
    created_at: str


class AccountList(BaseModel):
    object: Literal["list"]
    data: list[Account]
    next_cursor: str | None


class EntryList(BaseModel):
    object: Literal["list"]
    data: list[Entry]
    next_cursor: str | None


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "degraded"] = Field(
        description="degraded: Redis does not answer; transfers are still accepted, and"
        " posted once the sweeper wakes the workers."
    )
    checks: dict[str, str] = Field(
        description='postgresql, redis, idempotency_cache: "ok", or "degraded: <error>".'
    )


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    code: str


# ---------------------------------------------------------------------------- movements

SignedAmount = Annotated[
    int,
    Field(
        strict=True,
        ge=-limits.amount_max,
        le=limits.amount_max,
        description="Signed, in the minor unit: negative debits the account. Not zero.",
    ),
]
Moment = Annotated[datetime, Field(strict=False, description="RFC 3339, with its offset.")]


class EntryCreate(_Request):
    account_id: AccountId
    amount: SignedAmount


class TransactionCreate(_Request):
    entries: list[EntryCreate] = Field(
        min_length=2,
        description=f"2 to {limits.transaction_entries_max} entries; the same account may"
        " appear more than once; each currency's entries sum to zero.",
    )
    description: Description = None
    metadata: Metadata = Field(default_factory=dict)
    effective_at: Moment | None = Field(
        default=None, description="Yours, kept and shown; balances in the past follow posting."
    )


class EntryView(BaseModel):
    account_id: str
    amount: int
    currency: str
    balance_after: int | None = Field(description="Once posted.")


MovementKind = Literal[
    "deposit",
    "withdrawal",
    "transfer",
    "transaction",
    "payment",
    "hold",
    "capture",
    "cashback",
    "void",
    "expire",
    "reversal",
]


class Transaction(BaseModel):
    id: str
    object: Literal["transaction"]
    kind: MovementKind
    status: Literal["pending", "posted", "rejected", "quarantined"]
    rejection_reason: str | None
    rejected_account_id: str | None = Field(
        description="The account whose rule refused it (insufficient_funds, balance_overflow)."
    )
    entries: list[EntryView]
    amount: int = Field(description="What it moves: the sum of its debits.")
    currency: str | None = Field(description="null across currencies.")
    description: str | None
    metadata: dict[str, str]
    effective_at: str | None
    batch_id: str | None
    hold_id: str | None
    reverses_id: str | None
    reversed_amount: int
    reversed_by_ids: list[str]
    created_at: str
    posted_at: str | None


class TransactionList(BaseModel):
    object: Literal["list"]
    data: list[Transaction]
    next_cursor: str | None


class CashbackCreate(_Request):
    rewards_account_id: AccountId
    basis_points: int = Field(
        strict=True, ge=0, le=limits.basis_points_per_unit, description="Of the amount."
    )
    available_after_seconds: int | None = Field(
        default=None,
        strict=True,
        ge=1,
        le=limits.cashback_delay_seconds_max,
        description="Held until then, then posted to the customer.",
    )


class PaymentCreate(_Request):
    customer_account_id: AccountId
    merchant_account_id: AccountId
    amount: Amount
    cashback: CashbackCreate | None = None
    description: Description = None
    metadata: Metadata = Field(default_factory=dict)


class CashbackView(BaseModel):
    rewards_account_id: str
    basis_points: int | None
    amount: int = Field(description="floor(amount * basis_points / 10000).")
    hold_id: str | None
    status: Literal["pending", "posted", "rejected", "voided", "none"]


class Payment(BaseModel):
    id: str
    object: Literal["payment"]
    status: Literal["pending", "posted", "rejected", "quarantined"]
    rejection_reason: str | None
    customer_account_id: str
    merchant_account_id: str
    amount: int
    currency: str
    cashback: CashbackView | None
    description: str | None
    metadata: dict[str, str]
    reversed_amount: int
    created_at: str
    posted_at: str | None


class HoldCreate(_Request):
    source_account_id: AccountId
    destination_account_id: AccountId
    amount: Amount
    expires_in_seconds: int | None = Field(
        default=None, strict=True, ge=1, le=limits.hold_expires_in_seconds_max
    )
    description: Description = None
    metadata: Metadata = Field(default_factory=dict)


class Hold(BaseModel):
    id: str
    object: Literal["hold"]
    status: Literal["pending", "active", "captured", "voided", "expired", "rejected"]
    source_account_id: str
    destination_account_id: str
    amount: int
    captured_amount: int
    currency: str
    action_id: str | None
    expires_at: str | None
    capture_at: str | None
    created_at: str


class CaptureCreate(_Request):
    amount: Amount | None = Field(default=None, description="Default: all of the hold.")


class VoidCreate(_Request):
    pass


class ReversalCreate(_Request):
    amount: Amount | None = Field(default=None, description="Default: all that is left.")
    reason: Description = None


WebhookUrl = Annotated[str, Field(min_length=1, max_length=2048)]
# Spelled out for the OpenAPI document; a unit test holds it equal to EventType.
EventTypeName = Literal[
    "transfer.posted",
    "transfer.rejected",
    "transaction.posted",
    "transaction.rejected",
    "payment.posted",
    "payment.rejected",
    "hold.created",
    "hold.rejected",
    "hold.captured",
    "hold.voided",
    "hold.expired",
    "hold.action_rejected",
    "cashback.posted",
    "cashback.rejected",
    "transfer.reversed",
    "transfer.reversal_rejected",
]


class EndpointCreate(_Request):
    url: WebhookUrl
    events: list[EventTypeName] | None = Field(
        default=None, min_length=1, description="Default: every event type."
    )
    account_ids: list[AccountId] | None = Field(
        default=None, max_length=100, description="Default: every account."
    )
    description: Description = None


class EndpointUpdate(_Request):
    url: WebhookUrl | None = None
    events: list[EventTypeName] | None = Field(default=None, min_length=1)
    account_ids: list[AccountId] | None = Field(default=None, max_length=100)
    description: Description = None
    status: Literal["enabled", "disabled"] | None = None


class Endpoint(BaseModel):
    id: str
    object: Literal["webhook_endpoint"]
    url: str
    events: list[str]
    account_ids: list[str] | None
    description: str | None
    status: Literal["enabled", "disabled"]
    disabled_reason: str | None
    disabled_at: str | None = Field(
        description="When it was last disabled; kept once enabled again (a replay's since)."
    )
    created_at: str
    secret: str | None = Field(default=None, description="Only on creation.")
    replayed: int | None = Field(
        default=None,
        description="Only when a PATCH enabled it: deliveries created for the events it"
        " missed while disabled (at most WEBHOOK_REPLAY_EVENTS_MAX; if that many, POST"
        " .../replay with since = disabled_at for the rest).",
    )


class EndpointList(BaseModel):
    object: Literal["list"]
    data: list[Endpoint]
    next_cursor: str | None


class ReplayRequest(_Request):
    # Not strict: the request is JSON, where a time can only be a string.
    since: AwareDatetime = Field(
        strict=False,
        description="RFC 3339 time with an offset: events recorded since then are replayed.",
    )

    @field_validator("since")
    @classmethod
    def _in_utc_range(cls, value: datetime) -> datetime:
        # Year 1 at +14:00 is before the first UTC datetime: a 422, not an overflow later.
        try:
            return value.astimezone(UTC)
        except OverflowError as error:
            raise ValueError("since is out of range once converted to UTC") from error


class Replay(BaseModel):
    object: Literal["webhook_replay"]
    endpoint_id: str
    since: str
    created: int = Field(description="Deliveries created, due now, at most the bound.")
    more: bool = Field(
        description="The bound was reached: call again with the same since for the rest."
    )


class SecretRotated(BaseModel):
    id: str
    object: Literal["webhook_endpoint"]
    secret: str


class Delivery(BaseModel):
    id: str
    object: Literal["webhook_delivery"]
    event_id: str
    event_type: str
    endpoint_id: str
    status: Literal["pending", "succeeded", "failed", "abandoned"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: str | None
    created_at: str


class DeliveryList(BaseModel):
    object: Literal["list"]
    data: list[Delivery]
    next_cursor: str | None


class Event(BaseModel):
    id: str
    type: EventTypeName
    timestamp: str
    data: Transfer | Transaction = Field(
        description="A deposit, withdrawal or transfer as a transfer; any other movement"
        " as a transaction with its entries."
    )
