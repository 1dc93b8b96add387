"""Request and response shapes. The same models validate requests and generate /openapi.json."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

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


class _Request(BaseModel):
    # Unknown fields are errors: a misspelt "ammount" must not be silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


class AccountCreate(_Request):
    currency: str = Field(
        min_length=1, max_length=16, description="ISO 4217 code or an operator's custom unit."
    )
    name: str | None = Field(default=None, max_length=limits.name_length_max)
    metadata: Metadata = Field(default_factory=dict)
    allow_overdraft: bool = False


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
    posted: int = Field(description="Sum of the account's entries.")
    pending: int = Field(description="Net amount of accepted transfers not yet posted.")
    available: int = Field(description="posted minus outgoing pending transfers.")


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


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    code: str


WebhookUrl = Annotated[str, Field(min_length=1, max_length=2048)]


class EndpointCreate(_Request):
    url: WebhookUrl
    events: list[Literal["transfer.posted", "transfer.rejected"]] | None = Field(
        default=None, min_length=1, description="Default: every event type."
    )
    account_ids: list[AccountId] | None = Field(
        default=None, max_length=100, description="Default: every account."
    )
    description: Description = None


class EndpointUpdate(_Request):
    url: WebhookUrl | None = None
    events: list[Literal["transfer.posted", "transfer.rejected"]] | None = Field(
        default=None, min_length=1
    )
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
    created_at: str
    secret: str | None = Field(default=None, description="Only on creation.")


class EndpointList(BaseModel):
    object: Literal["list"]
    data: list[Endpoint]
    next_cursor: str | None


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
    type: Literal["transfer.posted", "transfer.rejected"]
    timestamp: str
    data: Transfer
