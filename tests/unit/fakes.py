"""In-memory stand-ins for the PostgreSQL unit of work, the Redis idempotency cache, the
posting wake-ups and the metrics.

`FakeStore` is a `UnitOfWorkFactory` and `FakeUnitOfWork` a `UnitOfWork`: mypy checks both
against `ledger_core/service_layer/ports.py` (see the bottom of this file), as it checks the
SQL adapters, so the fake cannot drift from the protocols. Each method mirrors its SQL in
`ledger_core/adapters/sql_*.py`, `webhook_sql.py` and `books_checks.py`, and the schema's
constraints (`ledger_core/adapters/tables.py`) are enforced, so a use case that writes books
PostgreSQL would refuse fails here too, with `FakeIntegrityError`.

Transactions: a unit of work copies the committed state on enter, works on the copy and
swaps it in on commit; whatever was not committed is dropped, as a rolled-back transaction
would be. Until it first writes, a unit of work sees what others commit meanwhile (READ
COMMITTED, statement by statement). Row locks, unique keys being inserted and advisory
locks are held by the open unit of work until it ends, so that two units of work open at
once behave as two transactions: a claim skips transfers another one holds (SKIP LOCKED);
a statement that would wait for a lock calls `store.on_lock_wait(holder)` (where a test
commits or rolls back the holder, as another thread would), and without that hook it
fails as PostgreSQL's statement timeout would, with `StorageUnavailableError`. Identity
columns (`seq`, entry ids) are sequences: a rolled-back insert burns its numbers.

What the fake cannot do (merge the writes of two units of work that both wrote and both
commit) raises `FakeLimitationError` and is recorded in `LIMITATIONS_HIT`, which the
unit-test conftest checks is empty after every test.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ledger_core.adapters.sql_transfers import stale_scan_rows_max
from ledger_core.domain import limits
from ledger_core.domain.access import ApiKey, ApiKeyRecord, Scope
from ledger_core.domain.ids import new_id
from ledger_core.domain.model import (
    HOLD_RELEASING_KINDS,
    HOLD_SETTLING_KINDS,
    POSTED_OUTCOMES,
    AccountFacts,
    AccountState,
    HoldChange,
    HoldState,
    HoldStatus,
    Leg,
    OriginalState,
    Outcome,
    Posted,
    TransferKind,
)
from ledger_core.domain.movement_records import (
    EntryView,
    HoldRecord,
    PaymentRecord,
    TransactionRecord,
)
from ledger_core.domain.records import (
    AccountRecord,
    AttemptRecord,
    BatchRecord,
    DeliveryRecord,
    EndpointRecord,
    EntryRecord,
    TransferRecord,
)
from ledger_core.domain.webhooks import (
    EVENT_TYPES,
    AttemptDecision,
    DeliveryStatus,
    EndpointStatus,
    endpoint_matches,
    event_payload,
)
from ledger_core.service_layer.errors import StorageRefusedError, StorageUnavailableError
from ledger_core.service_layer.ports import (
    BroughtEvent,
    Claim,
    ClaimedDelivery,
    ClaimedTransfer,
    EndpointBusy,
    KeyedRecord,
    NewBatch,
    NewHold,
    NewPayment,
    NewTransfer,
    Outbox,
    PendingWrite,
    StoredResponse,
    Violations,
)

TEST_API_KEY_ID = "key_test"


def admin_key(key_id: str) -> ApiKey:
    """An admin key as FakeStore(api_key_ids=...) creates it: its own owner."""
    return ApiKey(key_id, Scope.ADMIN, key_id)


# The key of the use cases' tests unless they say otherwise.
TEST_API_KEY = admin_key(TEST_API_KEY_ID)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
SMALLINT_MIN, SMALLINT_MAX = -(2**15), 2**15 - 1
NUMERIC_39_MAX = 10**39 - 1  # numeric(39, 0)
IDEMPOTENCY_TTL_SECONDS = 24 * 60 * 60  # PUT_RESPONSE's %(ttl)s: limits.idempotency_ttl_seconds
TRANSFER_KINDS = tuple(kind.value for kind in TransferKind)
# Kinds whose entries are in transfer_legs (no source, no destination).
LEGGED_KINDS = ("transaction", "payment", "reversal")
# Kinds that settle or release a hold: their money is in held_out/held_in while pending.
HOLD_ACTION_KINDS = tuple(k.value for k in (*HOLD_SETTLING_KINDS, *HOLD_RELEASING_KINDS))
# What only reserves or releases funds: never an entry (sql_movements.RESERVING_KINDS).
RESERVING_KINDS = ("hold", "void", "expire")
HOLD_STATUSES = tuple(status.value for status in HoldStatus)
TRANSFER_STATUSES = ("pending", "posted", "rejected", "quarantined")
RETRYABLE_DELIVERIES = (DeliveryStatus.PENDING.value, DeliveryStatus.FAILED.value)
ENDPOINT_COLUMNS = frozenset(
    {
        "url",
        "events",
        "account_ids",
        "description",
        "status",
        "disabled_reason",
        "secret",
        "previous_secret",
        "previous_secret_expires_at",
        "last_success_at",
        "failing_since",
        "disabled_at",
        "deleted_at",
    }
)


# Every FakeLimitationError of any store, even one a use case caught: conftest fails a
# test that hit one, since its result would not say what PostgreSQL does.
LIMITATIONS_HIT: list[str] = []


class FakeIntegrityError(StorageRefusedError):
    """What PostgreSQL would raise: a constraint of the schema was violated."""


class FakeLockTimeoutError(StorageUnavailableError):
    """A statement waited for a lock that another open unit of work holds and nobody
    released it: in one thread that wait never ends, so it ends as PostgreSQL's
    statement timeout would (transient, hence StorageUnavailableError)."""


class FakeLimitationError(Exception):
    """The fake cannot faithfully do this (merge two units of work that both wrote)."""


def _json(value: Any) -> Any:
    # JSONB columns and Redis values hold JSON: anything else would not survive storage.
    return json.loads(json.dumps(value))


def _in_range(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _require(condition: bool, constraint: str) -> None:
    if not condition:
        raise FakeIntegrityError(constraint)


# ----------------------------------------------------------------------------- rows


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


# ----------------------------------------------------------------------------- constraints


def _check_account(s: State, row: AccountRow) -> None:
    _require(_in_range(row.balance, -NUMERIC_39_MAX, NUMERIC_39_MAX), "accounts.balance numeric")
    for held in (row.held_out, row.held_in):
        _require(_in_range(held, 0, NUMERIC_39_MAX), "ck_accounts_held_nonnegative")
    _require(row.allow_overdraft or row.balance - row.held_out >= 0, "ck_accounts_no_overdraft")
    _require(not row.is_system or row.allow_overdraft, "ck_accounts_system_may_go_negative")
    if row.is_system:
        others = [
            a.id
            for a in s.accounts.values()
            if a.is_system and a.currency == row.currency and a.id != row.id
        ]
        _require(not others, "uq_accounts_system_currency")


def _check_transfer(s: State, t: TransferRow) -> None:
    _require(t.kind in TRANSFER_KINDS, "ck_transfers_kind_known")
    _require(t.status in TRANSFER_STATUSES, "ck_transfers_status_known")
    _require(_in_range(t.amount, 1, INT64_MAX), "ck_transfers_amount_positive (bigint)")
    _require(
        (t.kind in LEGGED_KINDS) == (t.source_account_id is None)
        and (t.source_account_id is None) == (t.destination_account_id is None),
        "ck_transfers_accounts_or_legs",
    )
    # A comparison with NULL is NULL, which a CHECK lets pass.
    _require(
        t.source_account_id is None or t.source_account_id != t.destination_account_id,
        "ck_transfers_distinct_accounts",
    )
    for account_id in (t.source_account_id, t.destination_account_id):
        _require(account_id is None or account_id in s.accounts, "fk_transfers_*_account_id")
    _require(_in_range(t.reversed_amount, 0, t.amount), "ck_transfers_reversed_within_amount")
    _require(
        (t.kind == "reversal") == (t.reverses_id is not None)
        and (t.kind == "reversal") == (t.reversal_amount is not None)
        and (t.reversal_amount is None or _in_range(t.reversal_amount, 1, INT64_MAX)),
        "ck_transfers_reversal_names_original",
    )
    _require(
        (t.kind in HOLD_ACTION_KINDS) == (t.hold_id is not None), "ck_transfers_action_names_hold"
    )
    _require(t.api_key_id in s.api_keys, "fk_transfers_api_key_id_api_keys")
    _require(t.batch_id is None or t.batch_id in s.batches, "fk_transfers_batch_id")
    _require(
        (t.status == "rejected") == (t.rejection_reason is not None),
        "ck_transfers_reason_iff_rejected",
    )
    _require((t.status == "posted") == (t.posted_at is not None), "ck_transfers_posted_at_iff")
    _require(
        (t.status in ("posted", "rejected")) == (t.finalized_at is not None),
        "ck_transfers_finalized_at_iff_final",
    )
    _require(
        t.status != "quarantined" or t.posting_error is not None,
        "ck_transfers_quarantined_has_error",
    )
    _require(_in_range(t.posting_attempts, 0, SMALLINT_MAX), "ck_transfers_posting_attempts")
    _require(_in_range(t.shard, SMALLINT_MIN, SMALLINT_MAX), "transfers.shard smallint")
    _require(
        (t.idempotency_key is None) == (t.request_hash is None),
        "ck_transfers_key_with_request_hash",
    )
    _require(
        t.idempotency_key is None or t.batch_id is None, "ck_transfers_key_on_transfer_or_batch"
    )


def _check_hold(s: State, row: HoldRow) -> None:
    _require(row.id in s.transfers, "fk_holds_id_transfers")
    _require(row.status in HOLD_STATUSES, "ck_holds_status_known")
    _require(_in_range(row.amount, 1, INT64_MAX), "ck_holds_amount_positive (bigint)")
    _require(_in_range(row.captured_amount, 0, row.amount), "ck_holds_captured_within_amount")


def _check_payment(s: State, row: PaymentRow) -> None:
    _require(row.id in s.transfers, "fk_payments_id_transfers")
    _require(_in_range(row.amount, 1, INT64_MAX), "payments.amount bigint")
    _require(
        row.basis_points is None or _in_range(row.basis_points, 0, limits.basis_points_per_unit),
        "ck_payments_basis_points_range",
    )
    _require(
        row.cashback_amount * limits.basis_points_per_unit <= row.amount * (row.basis_points or 0),
        "ck_payments_cashback_rounded_down",
    )


def _check_delivery(row: DeliveryRow) -> None:
    _require(
        row.status in (*RETRYABLE_DELIVERIES, "succeeded", "abandoned"),
        "ck_webhook_deliveries_status_known",
    )
    _require(row.attempts >= 0, "ck_webhook_deliveries_attempts_nonnegative")


# ----------------------------------------------------------------------------- store


LockKey = tuple[str, ...]


class FakeStore:
    """The database: committed state, a clock, locks, sequences, and hooks for tests.

    Calling the store opens a unit of work, so the store itself is the `uow_factory`.
    """

    def __init__(
        self, *, api_key_ids: Iterable[str] = (TEST_API_KEY_ID,), now: datetime | None = None
    ) -> None:
        # The clock stands still unless a test advances it, so times are exact in
        # assertions; it starts at the real time, for the use cases that read that.
        now = datetime.now(UTC) if now is None else now
        self.state = State()
        # Bumped by every commit that changed something, so a unit of work knows its copy
        # is out of date.
        self.version = 0
        self._now = now
        self.opened = 0
        self.commits = 0
        self.open_uows: list[FakeUnitOfWork] = []
        self.row_locks: dict[LockKey, FakeUnitOfWork] = {}
        self.unique_holders: dict[LockKey, FakeUnitOfWork] = {}
        self.advisory_locks: dict[tuple[str, ...], FakeUnitOfWork] = {}
        self.next_seq = 1
        self.next_entry_id = 1
        self.next_attempt_id = 1
        # Every repository call, as "transfers.claim"; tests read the order of statements.
        self.calls: list[str] = []
        # Test hooks. `faults`: "transfers.finalize" -> raised whenever that is called (a
        # schema or code defect, or a database that is away). `poisoned`: transfer id ->
        # raised by entries.add_posted when its outcome is among those written (a
        # corrupted row that fails whatever batch it is in).
        self.faults: dict[str, Exception] = {}
        self.poisoned: dict[str, Exception] = {}
        # Called with the holder when a statement would wait for its lock; the hook
        # commits or rolls the holder back, as the other thread would.
        self.on_lock_wait: Callable[[FakeUnitOfWork], None] | None = None
        self.limitations: list[str] = []
        for key_id in api_key_ids:
            self.state.api_keys[key_id] = ApiKeyRow(
                key_id, "test key", "admin", key_id.encode(), key_id, now
            )

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)

    def __call__(self) -> FakeUnitOfWork:
        self.opened += 1
        return FakeUnitOfWork(self)

    def limitation(self, what: str) -> FakeLimitationError:
        self.limitations.append(what)
        LIMITATIONS_HIT.append(what)
        return FakeLimitationError(what)

    def release(self, uow: FakeUnitOfWork) -> None:
        for held in (self.row_locks, self.unique_holders, self.advisory_locks):
            for key in [k for k, holder in held.items() if holder is uow]:
                del held[key]

    # Direct reads and writes of the committed state, for tests (an operator's psql).

    def _changed(self) -> None:
        self.version += 1

    def transfer(self, transfer_id: str) -> TransferRow:
        return self.state.transfers[transfer_id]

    def status(self, transfer_id: str) -> str:
        return self.state.transfers[transfer_id].status

    def statuses(self, transfer_ids: Iterable[str]) -> list[str]:
        return [self.status(i) for i in transfer_ids]

    def balances(self) -> dict[str, int]:
        return {a.id: a.balance for a in self.state.accounts.values()}

    def balance(self, account_id: str) -> int:
        return self.state.accounts[account_id].balance

    def held(self, account_id: str) -> tuple[int, int]:
        """(held_out, held_in) of the account."""
        row = self.state.accounts[account_id]
        return row.held_out, row.held_in

    def hold(self, hold_id: str) -> HoldRow:
        return self.state.holds[hold_id]

    def set_balance(self, account_id: str, balance: int) -> None:
        self.state.accounts[account_id].balance = balance
        self._changed()

    def system_account_id(self, currency: str) -> str:
        [account_id] = [
            a.id for a in self.state.accounts.values() if a.is_system and a.currency == currency
        ]
        return account_id

    def backdate(self, transfer_id: str, seconds: float) -> None:
        """As if the transfer had been accepted `seconds` earlier."""
        row = self.state.transfers[transfer_id]
        row.created_at -= timedelta(seconds=seconds)
        self._changed()

    def revoke_api_key(self, key_id: str) -> None:
        self.state.api_keys[key_id].revoked_at = self._now
        self._changed()

    def insert_account(
        self,
        account_id: str,
        currency: str = "USD",
        *,
        balance: int = 0,
        overdraft: bool = False,
        owner: str | None = None,
    ) -> None:
        row = AccountRow(
            account_id, currency, None, {}, overdraft, False, balance, self._now, owner=owner
        )
        self.state.accounts[account_id] = row
        _check_account(self.state, row)
        self._changed()

    def insert_transfer(self, record: TransferRecord, *, api_key_id: str = TEST_API_KEY_ID) -> None:
        """A transfer row as given (status and times included), for tests of what reads
        transfers; the schema's checks still apply."""
        row = TransferRow(
            id=record.id,
            seq=self.next_seq,
            kind=record.kind,
            source_account_id=record.source_account_id,
            destination_account_id=record.destination_account_id,
            amount=record.amount,
            currency=record.currency,
            description=record.description,
            metadata=_json(record.metadata),
            api_key_id=api_key_id,
            created_at=record.created_at or self._now,
            status=record.status,
            rejection_reason=record.rejection_reason,
            posted_at=record.posted_at,
            finalized_at=None if record.status in ("pending", "quarantined") else self._now,
            posting_error="inserted quarantined" if record.status == "quarantined" else None,
        )
        self.next_seq += 1
        self.state.transfers[row.id] = row
        _check_transfer(self.state, row)
        self._changed()

    def insert_endpoint(self, record: EndpointRecord) -> None:
        self.state.endpoints[record.id] = EndpointRow(
            id=record.id,
            url=record.url,
            events=_json(record.events),
            account_ids=_json(record.account_ids),
            description=record.description,
            secret=record.secret,
            created_at=record.created_at,
            status=record.status,
            disabled_reason=record.disabled_reason,
            previous_secret=record.previous_secret,
            previous_secret_expires_at=record.previous_secret_expires_at,
            failing_since=record.failing_since,
            disabled_at=record.disabled_at,
        )
        self._changed()


# ----------------------------------------------------------------------------- unit of work


class FakeUnitOfWork:
    """One transaction. It rolls back unless `commit()` was called."""

    def __init__(self, store: FakeStore) -> None:
        self._store = store
        self._working: State | None = None
        self._base_version = -1
        self._dirty = False
        self._entered = False
        self.active = False
        self.committed = False
        # A statement failed: PostgreSQL refuses every further one, and COMMIT rolls back.
        self.aborted = False
        self.now = store.now()  # now(): the transaction's start
        self.accounts = FakeAccounts(self)
        self.transfers = FakeTransfers(self)
        self.entries = FakeEntries(self)
        self.holds = FakeHolds(self)
        self.payments = FakePayments(self)
        self.idempotency = FakeIdempotency(self)
        self.api_keys = FakeApiKeys(self)
        self.currencies = FakeCurrencies(self)
        self.endpoints = FakeEndpoints(self)
        self.events = FakeEvents(self)
        self.deliveries = FakeDeliveries(self)
        self.books = FakeBooks(self)

    @property
    def store(self) -> FakeStore:
        return self._store

    def __enter__(self) -> FakeUnitOfWork:
        if self._entered:
            raise RuntimeError("unit of work entered twice")
        self._entered = True
        self.active = True
        self.now = self._store.now()
        self._working = self._store.state.clone()
        self._base_version = self._store.version
        self._store.open_uows.append(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Whatever was not committed is dropped, like a transaction rolled back on close.
        if self.active:
            self._end()
        if self in self._store.open_uows:
            self._store.open_uows.remove(self)

    def commit(self) -> None:
        self._require_active()
        if self.aborted:
            self._end()  # COMMIT of a failed transaction is a ROLLBACK, without an error
            return
        if self._dirty:
            if self._store.version != self._base_version:
                raise self._store.limitation(
                    "two units of work wrote and both commit: the fake cannot merge them"
                )
            assert self._working is not None
            self._store.state = self._working
            self._store.version += 1
        self._store.commits += 1
        self.committed = True
        self._end()

    def rollback(self) -> None:
        """For tests standing in for another transaction (not part of the protocol)."""
        self._require_active()
        self._end()

    def try_advisory_lock(self, *parts: str) -> bool:
        self.statement("uow.try_advisory_lock")
        holder = self._store.advisory_locks.get(parts)
        if holder is not None and holder is not self:
            return False
        self._store.advisory_locks[parts] = self
        return True

    # What the repositories use.

    def _require_active(self) -> None:
        if not self.active:
            raise RuntimeError("unit of work used outside its transaction")

    def _end(self) -> None:
        self.active = False
        self._working = None
        self._store.release(self)

    @property
    def working(self) -> State:
        self._require_active()
        assert self._working is not None
        return self._working

    def _refresh_if_stale(self) -> None:
        """READ COMMITTED: a statement sees what others committed before it started. Once
        this transaction wrote, its copy cannot take theirs in (see FakeLimitationError)."""
        if self._store.version != self._base_version and not self._dirty:
            self._working = self._store.state.clone()
            self._base_version = self._store.version

    def statement(self, name: str) -> State:
        self._require_active()
        if self.aborted:
            raise FakeIntegrityError("current transaction is aborted (an earlier statement failed)")
        self._store.calls.append(name)
        fault = self._store.faults.get(name)
        if fault is not None:
            raise fault
        self._refresh_if_stale()
        return self.working

    def wrote(self) -> None:
        self._dirty = True

    def _wait_for(self, holder: FakeUnitOfWork, what: LockKey) -> None:
        hook = self._store.on_lock_wait
        if hook is not None:
            hook(holder)
        if holder.active:
            raise FakeLockTimeoutError(f"waited for {what} held by another unit of work")
        if self._dirty and self._store.version != self._base_version:
            raise self._store.limitation(f"{what} changed under a transaction that already wrote")
        self._refresh_if_stale()

    def lock_row(self, table: str, row_id: str, *, skip_locked: bool = False) -> bool:
        """FOR UPDATE (or the lock an UPDATE takes): wait for another holder, or with
        `skip_locked` pass the row by. True once this transaction holds the row."""
        key = (table, row_id)
        holder = self._store.row_locks.get(key)
        if holder is not None and holder is not self:
            if skip_locked:
                return False
            self._wait_for(holder, key)
        self._store.row_locks[key] = self
        return True

    def insert_unique(self, key: LockKey, exists: Callable[[State], bool]) -> bool:
        """May this transaction insert a row under this unique key? A unique index sees
        other transactions' rows: an uncommitted one makes the insert wait for its
        transaction, a committed one is a conflict even if this snapshot does not show it."""
        holder = self._store.unique_holders.get(key)
        if holder is not None and holder is not self:
            self._wait_for(holder, key)
        if exists(self.working) or exists(self._store.state):
            return False
        self._store.unique_holders[key] = self
        return True


def _aborting(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def statement(self: _Repository, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception:
            # In PostgreSQL an error aborts the whole transaction, not just the statement.
            self._uow.aborted = True
            raise

    return statement


class _Repository:
    table = ""

    def __init_subclass__(cls) -> None:
        for name, value in list(vars(cls).items()):
            if callable(value) and not name.startswith("_"):
                setattr(cls, name, _aborting(value))

    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    def _statement(self, method: str) -> State:
        return self._uow.statement(f"{self.table}.{method}")

    @property
    def _s(self) -> State:
        # The current copy: after a wait it may be a fresh one, so never keep rows across
        # a lock.
        return self._uow.working

    @property
    def _now(self) -> datetime:
        return self._uow.now

    @property
    def _store(self) -> FakeStore:
        return self._uow.store


# ----------------------------------------------------------------------------- accounts


def _pending(s: State, account_id: str) -> tuple[int, int]:
    """(pending_in, pending_out) as RECORD_COLUMNS sums them: two-account movements by
    their accounts, except a hold's settlement or release (its money is held already),
    and the legs of the others."""
    pending_in = pending_out = 0
    for t in s.transfers.values():
        if t.status != "pending":
            continue
        if t.kind not in HOLD_ACTION_KINDS:
            pending_in += t.amount if t.destination_account_id == account_id else 0
            pending_out += t.amount if t.source_account_id == account_id else 0
        for leg in s.legs.get(t.id, ()):
            if leg.account_id == account_id:
                pending_in += max(leg.amount, 0)
                pending_out += max(-leg.amount, 0)
    return pending_in, pending_out


def _account_record(s: State, row: AccountRow) -> AccountRecord:
    pending_in, pending_out = _pending(s, row.id)
    return AccountRecord(
        id=row.id,
        currency=row.currency,
        name=row.name,
        metadata=copy.deepcopy(row.metadata),
        allow_overdraft=row.allow_overdraft,
        is_system=row.is_system,
        posted=row.balance,
        pending_in=pending_in,
        pending_out=pending_out,
        created_at=row.created_at,
        held_out=row.held_out,
        held_in=row.held_in,
    )


def _facts(row: AccountRow) -> AccountFacts:
    return AccountFacts(row.id, row.currency, row.allow_overdraft, row.is_system, row.owner)


class FakeAccounts(_Repository):
    table = "accounts"

    def add(
        self,
        *,
        id: str,
        currency: str,
        name: str | None,
        metadata: dict[str, str],
        allow_overdraft: bool,
        owner: str | None,
    ) -> None:
        s = self._statement("add")
        _require(id not in s.accounts, "pk_accounts")
        row = AccountRow(
            id, currency, name, _json(metadata), allow_overdraft, False, 0, self._now, owner=owner
        )
        _check_account(s, row)
        self._uow.wrote()
        s.accounts[id] = row

    def ensure_system_account(self, currency: str, id: str) -> None:
        self._statement("ensure_system_account")

        def exists(state: State) -> bool:
            return any(a.is_system and a.currency == currency for a in state.accounts.values())

        # ON CONFLICT (currency) WHERE is_system DO NOTHING: only that index may conflict.
        if not self._uow.insert_unique(("accounts.system", currency), exists):
            return
        s = self._s
        _require(id not in s.accounts, "pk_accounts")
        row = AccountRow(id, currency, f"{currency} system account", {}, True, True, 0, self._now)
        self._uow.wrote()
        s.accounts[id] = row

    def get(self, account_id: str) -> AccountRecord | None:
        s = self._statement("get")
        row = s.accounts.get(account_id)
        return None if row is None else _account_record(s, row)

    def list_page(self, *, after_id: str | None, limit: int) -> list[AccountRecord]:
        s = self._statement("list_page")
        rows = sorted(s.accounts.values(), key=lambda a: a.id)
        if after_id is not None:
            rows = [a for a in rows if a.id > after_id]
        return [_account_record(s, a) for a in rows[:limit]]

    def facts(self, account_ids: Collection[str]) -> dict[str, AccountFacts]:
        s = self._statement("facts")
        return {i: _facts(s.accounts[i]) for i in account_ids if i in s.accounts}

    def system_facts(self, currency: str) -> AccountFacts | None:
        s = self._statement("system_facts")
        for row in s.accounts.values():
            if row.is_system and row.currency == currency:
                return _facts(row)
        return None

    def lock(self, account_ids: Collection[str]) -> dict[str, AccountState]:
        # FOR NO KEY UPDATE in ascending id order: a holder makes this wait.
        ids = sorted(set(account_ids))
        existing = [i for i in ids if i in self._statement("lock").accounts]
        for account_id in existing:
            self._uow.lock_row("accounts", account_id)
        s = self._s
        return {
            i: AccountState(
                i,
                s.accounts[i].currency,
                s.accounts[i].balance,
                s.accounts[i].allow_overdraft,
                s.accounts[i].is_system,
                s.accounts[i].held_out,
                s.accounts[i].held_in,
            )
            for i in existing
            if i in s.accounts
        }

    def set_balances(
        self, balances: Mapping[str, int], held: Mapping[str, tuple[int, int]] | None = None
    ) -> None:
        held = held or {}
        s = self._statement("set_balances")
        existing = [i for i in dict.fromkeys([*balances, *held]) if i in s.accounts]
        for account_id in existing:
            self._uow.lock_row("accounts", account_id)
        s = self._s
        self._uow.wrote()
        for account_id in existing:
            # An UPDATE that matches no row changes nothing; one row gets its balance and
            # its holds at once, so its checks see both (SET_BALANCES_AND_HELD).
            row = s.accounts[account_id]
            row.balance = balances.get(account_id, row.balance)
            row.held_out, row.held_in = held.get(account_id, (row.held_out, row.held_in))
            _check_account(s, row)

    def balance_as_of(self, account_id: str, moment: datetime) -> int:
        s = self._statement("balance_as_of")
        # BALANCE_AS_OF: the last entry at or before the moment, by (created_at, id).
        before = [e for e in s.entries if e.account_id == account_id and e.created_at <= moment]
        if not before:
            return 0
        return max(before, key=lambda e: (e.created_at, e.id)).balance_after


# ----------------------------------------------------------------------------- transfers


def _accepted(transfer: NewTransfer, created_at: datetime, batch_id: str | None) -> TransferRecord:
    # What the SQL adapter builds from its arguments (not read back), metadata included.
    return TransferRecord(
        id=transfer.id,
        kind=transfer.kind,
        status="pending",
        rejection_reason=None,
        source_account_id=transfer.source_account_id,
        destination_account_id=transfer.destination_account_id,
        amount=transfer.amount,
        currency=transfer.currency,
        description=transfer.description,
        metadata=transfer.metadata,
        created_at=created_at,
        posted_at=None,
        batch_id=batch_id,
    )


def _entry_views(s: State, row: TransferRow) -> list[EntryView]:
    """sql_movements.movements: the posted entries of a movement, else its planned legs,
    else (its two accounts) the pair it would post; none for what only reserves funds."""
    posted = sorted(
        (e for e in s.entries if e.transfer_id == row.id), key=lambda e: s.entry_legs[e.id]
    )
    if posted:
        return [
            EntryView(e.account_id, e.amount, s.accounts[e.account_id].currency, e.balance_after)
            for e in posted
        ]
    if row.source_account_id is None and row.id in s.legs:
        return [
            EntryView(leg.account_id, leg.amount, s.accounts[leg.account_id].currency)
            for leg in s.legs[row.id]
        ]
    if row.kind in RESERVING_KINDS:
        return []
    assert row.source_account_id is not None and row.destination_account_id is not None
    source, destination = s.accounts[row.source_account_id], s.accounts[row.destination_account_id]
    return [
        EntryView(source.id, -row.amount, source.currency),
        EntryView(destination.id, row.amount, destination.currency),
    ]


def _movement_record(s: State, row: TransferRow) -> TransactionRecord:
    return TransactionRecord(
        id=row.id,
        kind=row.kind,
        status=row.status,
        rejection_reason=row.rejection_reason,
        rejected_account_id=row.rejected_account_id,
        entries=_entry_views(s, row),
        amount=row.amount,
        currency=row.currency,
        description=row.description,
        metadata=copy.deepcopy(row.metadata),
        effective_at=row.effective_at,
        created_at=row.created_at,
        posted_at=row.posted_at,
        batch_id=row.batch_id,
        hold_id=row.hold_id,
        reverses_id=row.reverses_id,
        reversed_amount=row.reversed_amount,
        reversed_by_ids=sorted(t.id for t in s.transfers.values() if t.reverses_id == row.id),
    )


def _unit_size(s: State, head: TransferRow) -> int:
    # CLAIM_COLUMNS' unit_size: 1, the item count of the head's batch, or the members of
    # a group that has no batch (a payment with its cashback hold, a refund with its void).
    if head.group_id is None:
        return 1
    if head.batch_id is not None:
        return s.batches[head.batch_id].item_count
    return sum(t.group_id == head.id for t in s.transfers.values())


def _key_order(write: PendingWrite) -> tuple[str, bool, str]:
    return write.api_key_id, write.idempotency_key is None, write.idempotency_key or ""


class FakeTransfers(_Repository):
    table = "transfers"

    def _insert(self, row: TransferRow) -> None:
        s = self._s
        _require(row.id not in s.transfers, "pk_transfers")
        row.metadata = _json(row.metadata)
        _check_transfer(s, row)
        s.transfers[row.id] = row

    def _next_seq(self) -> int:
        # A sequence: not rolled back with the transaction.
        seq = self._store.next_seq
        self._store.next_seq += 1
        return seq

    def add_pending(self, writes: Sequence[PendingWrite]) -> dict[str, TransferRecord]:
        self._statement("add_pending")
        stored: dict[str, TransferRecord] = {}
        # ORDER BY api_key_id, key (NULLS LAST): seq follows key order within one statement,
        # so a movement comes before the keyless members stored with it; and a key met
        # twice is stored once (ON CONFLICT DO NOTHING sees the statement's own rows).
        for write in sorted(writes, key=_key_order):
            api_key_id, key, transfer = write.api_key_id, write.idempotency_key, write.transfer

            def exists(state: State, api_key_id: str = api_key_id, key: str | None = key) -> bool:
                return any(
                    t.api_key_id == api_key_id and t.idempotency_key == key
                    for t in state.transfers.values()
                )

            # The unique index is partial (WHERE idempotency_key IS NOT NULL).
            if key is not None and not self._uow.insert_unique(
                ("transfers.key", api_key_id, key), exists
            ):
                continue
            self._uow.wrote()
            # ADD_PENDING inserts no batch_id: a single movement (and the members stored
            # with it, as a payment's cashback hold) is of no batch.
            self._insert(
                TransferRow(
                    id=transfer.id,
                    seq=self._next_seq(),
                    kind=transfer.kind,
                    source_account_id=transfer.source_account_id,
                    destination_account_id=transfer.destination_account_id,
                    amount=transfer.amount,
                    currency=transfer.currency,
                    description=transfer.description,
                    metadata=transfer.metadata,
                    api_key_id=api_key_id,
                    created_at=self._now,
                    idempotency_key=key,
                    request_hash=write.request_hash,
                    shard=transfer.shard,
                    group_id=transfer.group_id,
                    hold_id=transfer.hold_id,
                    reverses_id=transfer.reverses_id,
                    reversal_amount=transfer.reversal_amount,
                    effective_at=transfer.effective_at,
                )
            )
            self._insert_legs(transfer.id, transfer.legs)
            stored[transfer.id] = _accepted(transfer, self._now, None)
        return stored

    def _insert_legs(self, transfer_id: str, legs: Sequence[Leg]) -> None:
        # ADD_LEGS: one row per leg, numbered in the order given.
        s = self._s
        for index, leg in enumerate(legs):
            _require(leg.account_id in s.accounts, "fk_transfer_legs_account_id_accounts")
            _require(_in_range(leg.amount, INT64_MIN, INT64_MAX), "transfer_legs.amount bigint")
            _require(leg.amount != 0, "ck_transfer_legs_amount_nonzero")
            _require(_in_range(index, 0, SMALLINT_MAX), "transfer_legs.leg smallint")
        if legs:
            _require(transfer_id not in s.legs, "pk_transfer_legs")
            s.legs[transfer_id] = tuple(legs)

    def add_batch(self, batch: NewBatch) -> BatchRecord | None:
        self._statement("add_batch")

        def exists(state: State) -> bool:
            return any(
                b.api_key_id == batch.api_key_id and b.idempotency_key == batch.idempotency_key
                for b in state.batches.values()
            )

        key = ("transfer_batches.key", batch.api_key_id, batch.idempotency_key)
        if not self._uow.insert_unique(key, exists):
            return None
        s = self._s
        _require(batch.id not in s.batches, "pk_transfer_batches")
        _require(batch.api_key_id in s.api_keys, "fk_transfer_batches_api_key_id_api_keys")
        _require(1 <= len(batch.items) <= 1000, "ck_transfer_batches_item_count_range")
        self._uow.wrote()
        s.batches[batch.id] = BatchRow(
            batch.id,
            batch.api_key_id,
            batch.idempotency_key,
            batch.request_hash,
            batch.atomic,
            len(batch.items),
            self._now,
        )
        for item in batch.items:  # in item order, so seq follows it
            self._insert(
                TransferRow(
                    id=item.id,
                    seq=self._next_seq(),
                    kind=item.kind,
                    source_account_id=item.source_account_id,
                    destination_account_id=item.destination_account_id,
                    amount=item.amount,
                    currency=item.currency,
                    description=item.description,
                    metadata=item.metadata,
                    api_key_id=batch.api_key_id,
                    created_at=self._now,
                    batch_id=batch.id,
                    group_id=item.group_id,
                    shard=item.shard,
                )
            )
        return BatchRecord(
            batch.id,
            batch.atomic,
            self._now,
            [_accepted(i, self._now, batch.id) for i in batch.items],
        )

    def by_idempotency_keys(
        self, keys: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], KeyedRecord]:
        s = self._statement("by_idempotency_keys")
        wanted = set(keys)
        found: dict[tuple[str, str], KeyedRecord] = {}
        for t in s.transfers.values():
            if t.idempotency_key is not None and (t.api_key_id, t.idempotency_key) in wanted:
                assert t.request_hash is not None
                found[(t.api_key_id, t.idempotency_key)] = KeyedRecord(t.request_hash, t.record())
        return found

    def batch_by_idempotency_key(self, api_key_id: str, key: str) -> KeyedRecord | None:
        s = self._statement("batch_by_idempotency_key")
        for b in s.batches.values():
            if b.api_key_id == api_key_id and b.idempotency_key == key:
                return KeyedRecord(b.request_hash, self._batch(s, b))
        return None

    def get(self, transfer_id: str) -> TransferRecord | None:
        row = self._statement("get").transfers.get(transfer_id)
        return None if row is None else row.record()

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        s = self._statement("get_batch")
        row = s.batches.get(batch_id)
        return None if row is None else self._batch(s, row)

    @staticmethod
    def _batch(s: State, row: BatchRow) -> BatchRecord:
        items = [t.record() for t in s.by_seq() if t.batch_id == row.id]
        return BatchRecord(row.id, row.atomic, row.created_at, items)

    def claim(self, *, shard: int, limit: int, only_ids: Sequence[str] | None = None) -> Claim:
        s = self._statement("claim")
        candidates = [t for t in s.by_seq() if t.claimable]
        if only_ids is None:
            candidates = [
                t
                for t in candidates
                if t.shard == shard
                and (t.posting_retry_at is None or t.posting_retry_at <= self._now)
            ]
        else:
            # CLAIM_IDS: any shard, due or not (tools, tests and bisection name transfers).
            wanted = set(only_ids)
            candidates = [t for t in candidates if t.id in wanted]
        # LIMIT ... FOR NO KEY UPDATE SKIP LOCKED: rows another transaction holds are
        # passed by, and the limit counts the rows this one gets.
        rows: list[TransferRow] = []
        for t in candidates:
            if len(rows) >= limit:
                break
            if self._uow.lock_row("transfers", t.id, skip_locked=True):
                rows.append(t)
        if not rows:
            return Claim([], now=self._now)
        kept: list[TransferRow] = []
        size = 0
        for row in rows:
            unit_size = _unit_size(s, row)
            if kept and size + unit_size > limit:
                break  # heads cut off here stay locked until this transaction ends
            kept.append(row)
            size += unit_size
        full = len(rows) >= limit or len(kept) < len(rows)
        heads = {row.id for row in kept if row.group_id is not None}
        member_ids = [
            t.id
            for t in s.by_seq()
            if t.group_id in heads and t.id != t.group_id and t.status == "pending"
        ]
        for member_id in member_ids:
            self._uow.lock_row("transfers", member_id)  # no SKIP LOCKED: only heads' holders
        s = self._s
        members: dict[str, list[ClaimedTransfer]] = {}
        for member_id in member_ids:
            member = s.transfers[member_id]
            assert member.group_id is not None
            claimed = member.claimed(s.legs.get(member.id, ()))
            members.setdefault(member.group_id, []).append(claimed)
        transfers: list[ClaimedTransfer] = []
        for row in kept:
            # CLAIM_LEGS: the legs of those with no source, in leg order.
            transfers.append(s.transfers[row.id].claimed(s.legs.get(row.id, ())))
            transfers += members.get(row.id, []) if row.group_id is not None else []
        return Claim(transfers, now=self._now, full=full)

    def finalize(
        self,
        outcomes: Sequence[Outcome],
        *,
        now: datetime,
        outbox: Outbox,
        payloads: Mapping[str, BroughtEvent] | None = None,
    ) -> list[str]:
        s = self._statement("finalize")
        brought = payloads or {}
        pending = [
            o
            for o in outcomes
            if o.transfer_id in s.transfers and s.transfers[o.transfer_id].status == "pending"
        ]
        for outcome in pending:
            self._uow.lock_row("transfers", outcome.transfer_id)
        s = self._s
        if not outcomes:
            return []
        self._uow.wrote()
        final: list[TransferRow] = []
        for outcome in pending:
            row = s.transfers[outcome.transfer_id]
            if row.status != "pending":
                continue
            if isinstance(outcome, POSTED_OUTCOMES):
                row.status, row.rejection_reason, row.posted_at = "posted", None, now
                row.rejected_account_id = None
            else:
                row.status, row.rejection_reason = "rejected", outcome.reason.value
                row.rejected_account_id, row.posted_at = outcome.account_id, None
            # clock_timestamp() in the SQL: the fake's clock.
            row.finalized_at = self._store.now()
            row.posting_retry_at = None
            _check_transfer(s, row)
            final.append(row)
        # The same statement writes the outbox, from the rows it finalized: an event per
        # transfer, a delivery per enabled endpoint that matches it.
        endpoints = [
            e.record()
            for e in sorted(s.endpoints.values(), key=lambda e: e.id)
            if e.status == EndpointStatus.ENABLED.value and e.deleted_at is None
        ]
        enqueued_until = outbox.time + timedelta(seconds=outbox.requeue_after_seconds)
        delivery_ids: list[str] = []
        for row in final:
            event = EVENT_TYPES.get((row.kind, row.status))
            _require(event is not None, "events.type NOT NULL (no event for the kind)")
            assert event is not None
            event_type = event.value
            _require(all(e.transfer_id != row.id for e in s.events.values()), "uq_events_transfer")
            pre = brought.get(row.id)
            if pre is None:  # a two-account transfer: the statement builds its payload
                event_id = new_id("evt")
                payload = event_payload(event_id, event_type, outbox.time, row.record())
                accounts = {a for a in (row.source_account_id, row.destination_account_id) if a}
            else:  # any other movement brings its own, built by the worker
                event_id, payload, accounts = pre.event_id, pre.payload, set(pre.accounts)
            _require(event_id not in s.events, "pk_events")
            s.events[event_id] = EventRow(event_id, event_type, row.id, payload, outbox.time)
            for endpoint in endpoints:
                if endpoint_matches(endpoint, event_type, accounts):
                    delivery_id = new_id("wd")
                    s.deliveries[delivery_id] = DeliveryRow(
                        delivery_id,
                        event_id,
                        endpoint.id,
                        next_attempt_at=outbox.time,
                        enqueued_until=enqueued_until,
                        created_at=outbox.time,
                    )
                    delivery_ids.append(delivery_id)
        return delivery_ids

    def lock_originals(self, transfer_ids: Collection[str]) -> dict[str, OriginalState]:
        s = self._statement("lock_originals")
        existing = [i for i in sorted(set(transfer_ids)) if i in s.transfers]
        for transfer_id in existing:
            self._uow.lock_row("transfers", transfer_id)
        s = self._s
        return {
            i: OriginalState(i, s.transfers[i].amount, s.transfers[i].reversed_amount)
            for i in existing
        }

    def set_reversed(self, reversed_amounts: Mapping[str, int]) -> None:
        s = self._statement("set_reversed")
        existing = [i for i in reversed_amounts if i in s.transfers]
        for transfer_id in existing:
            self._uow.lock_row("transfers", transfer_id)
        if not existing:
            return
        s = self._s
        self._uow.wrote()
        for transfer_id in existing:
            row = s.transfers[transfer_id]
            row.reversed_amount = reversed_amounts[transfer_id]
            _check_transfer(s, row)

    def movements(self, transfer_ids: Sequence[str]) -> dict[str, TransactionRecord]:
        s = self._statement("movements")
        return {i: _movement_record(s, s.transfers[i]) for i in transfer_ids if i in s.transfers}

    def get_movement(self, transfer_id: str) -> TransactionRecord | None:
        s = self._statement("get_movement")
        row = s.transfers.get(transfer_id)
        return None if row is None else _movement_record(s, row)

    def list_movements(self, *, after_id: str | None, limit: int) -> list[TransactionRecord]:
        s = self._statement("list_movements")
        # As sql_movements.list_movements: every movement, by id.
        rows = sorted(s.transfers.values(), key=lambda t: t.id)
        if after_id is not None:
            rows = [t for t in rows if t.id > after_id]
        return [_movement_record(s, t) for t in rows[:limit]]

    def record_posting_failure(
        self,
        transfer_ids: Sequence[str],
        *,
        error: str,
        attempts_max: int,
        retry_delays_seconds: Sequence[float],
    ) -> list[str]:
        s = self._statement("record_posting_failure")
        ids = [
            i
            for i in dict.fromkeys(transfer_ids)
            if i in s.transfers and s.transfers[i].status == "pending"
        ]
        for transfer_id in ids:
            self._uow.lock_row("transfers", transfer_id)
        s = self._s
        self._uow.wrote()
        delays = [float(d) for d in retry_delays_seconds]
        quarantined: list[str] = []
        for transfer_id in ids:
            row = s.transfers[transfer_id]
            attempts = row.posting_attempts + 1
            row.posting_attempts = attempts
            row.posting_error = error
            if attempts >= attempts_max:
                row.status = "quarantined"
                quarantined.append(transfer_id)
            # delays[least(attempts, cardinality)], 1-based; an empty array gives NULL.
            row.posting_retry_at = (
                self._now + timedelta(seconds=delays[min(attempts, len(delays)) - 1])
                if delays
                else None
            )
            _check_transfer(s, row)
        return quarantined

    def stale_shards(self, *, older_than: datetime) -> dict[int, int]:
        s = self._statement("stale_shards")
        # A plain SELECT: rows other transactions hold are counted too.
        stale = [
            t
            for t in s.by_seq()
            if t.claimable
            and t.created_at < older_than
            and (t.posting_retry_at is None or t.posting_retry_at <= self._now)
        ][:stale_scan_rows_max]
        counts: dict[int, int] = {}
        for t in stale:
            counts[t.shard] = counts.get(t.shard, 0) + 1
        return counts

    def release_quarantined_ids(self, transfer_id: str) -> list[str]:
        s = self._statement("release_quarantined")
        named = s.transfers.get(transfer_id)
        if named is None:
            return []
        # As RELEASE: the named transfer, and the rest of its atomic group with it.
        group_id = named.group_id
        ids = [
            row_id
            for row_id, row in s.transfers.items()
            if row.status == "quarantined"
            and (row_id == transfer_id or (group_id is not None and row.group_id == group_id))
        ]
        if not ids:
            return []
        for row_id in ids:
            self._uow.lock_row("transfers", row_id)
        self._uow.wrote()
        for row_id in ids:
            row = self._s.transfers[row_id]
            row.status, row.posting_attempts, row.posting_retry_at = "pending", 0, None
            _check_transfer(self._s, row)
        return ids


# ----------------------------------------------------------------------------- entries


class FakeEntries(_Repository):
    table = "entries"

    def add_posted(self, outcomes: Sequence[Outcome]) -> None:
        s = self._statement("add_posted")
        for outcome in outcomes:
            poison = self._store.poisoned.get(outcome.transfer_id)
            if poison is not None:
                raise poison
        entries = [e for o in outcomes if isinstance(o, Posted) for e in o.entries]
        if not entries:
            return
        self._uow.wrote()
        seen = {(e.transfer_id, s.entry_legs[e.id]) for e in s.entries}
        sums: dict[tuple[str, str], int] = {}
        for entry in entries:
            _require(_in_range(entry.amount, INT64_MIN, INT64_MAX), "entries.amount bigint")
            _require(entry.amount != 0, "ck_entries_amount_nonzero")
            _require(
                _in_range(entry.balance_after, -NUMERIC_39_MAX, NUMERIC_39_MAX),
                "entries.balance_after numeric",
            )
            _require(entry.transfer_id in s.transfers, "fk_entries_transfer_id_transfers")
            _require(entry.account_id in s.accounts, "fk_entries_account_id_accounts")
            _require(_in_range(entry.leg, SMALLINT_MIN, SMALLINT_MAX), "entries.leg smallint")
            pair = (entry.transfer_id, entry.leg)
            _require(pair not in seen, "uq_entries_transfer_id_leg")
            seen.add(pair)
            currency = (entry.transfer_id, s.accounts[entry.account_id].currency)
            sums[currency] = sums.get(currency, 0) + entry.amount
            entry_id = self._store.next_entry_id
            self._store.next_entry_id += 1
            # created_at is clock_timestamp() of the insert: the store's clock.
            s.entries.append(
                EntryRecord(
                    entry_id,
                    entry.transfer_id,
                    entry.account_id,
                    entry.amount,
                    entry.balance_after,
                    self._store.now(),
                )
            )
            s.entry_legs[entry_id] = entry.leg
        # The statement trigger entries_refer_and_balance (migration 0004).
        _require(not any(sums.values()), "entries_refer_and_balance: a currency does not sum to 0")

    def list_page(
        self,
        account_id: str,
        *,
        after_id: int | None,
        limit: int,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> list[EntryRecord]:
        s = self._statement("list_page")
        # ENTRIES_PAGE: an id cursor, an open time window, ORDER BY created_at, id.
        rows = [
            e
            for e in s.entries
            if e.account_id == account_id
            and (after_id is None or e.id > after_id)
            and (created_after is None or e.created_at > created_after)
            and (created_before is None or e.created_at < created_before)
        ]
        rows.sort(key=lambda e: (e.created_at, e.id))
        return rows[:limit]


# ----------------------------------------------------------------------------- holds, payments


class FakeHolds(_Repository):
    table = "holds"

    def add(self, hold: NewHold) -> None:
        s = self._statement("add")
        _require(hold.id not in s.holds, "pk_holds")
        row = HoldRow(
            hold.id,
            hold.source_account_id,
            hold.destination_account_id,
            hold.amount,
            hold.currency,
            self._now,  # created_at: now(), the transaction's start
            expires_at=hold.expires_at,
            capture_at=hold.capture_at,
        )
        _check_hold(s, row)
        self._uow.wrote()
        s.holds[row.id] = row

    def get(self, hold_id: str) -> HoldRecord | None:
        row = self._statement("get").holds.get(hold_id)
        return None if row is None else row.record()

    def lock(self, hold_ids: Collection[str]) -> dict[str, HoldState]:
        # FOR NO KEY UPDATE in ascending id order: a holder makes this wait.
        existing = [i for i in sorted(set(hold_ids)) if i in self._statement("lock").holds]
        for hold_id in existing:
            self._uow.lock_row("holds", hold_id)
        s = self._s
        return {i: s.holds[i].state() for i in existing}

    def claim_action(
        self, hold_id: str, action_id: str, *, unexpired_at: datetime | None = None
    ) -> bool:
        row = self._statement("claim_action").holds.get(hold_id)
        if row is None or not row.claimable_by_action(unexpired_at):
            return False
        # An UPDATE waits for the row's holder, then re-checks its WHERE on the row as
        # that one left it: of two actions that race, the second finds the first's.
        self._uow.lock_row("holds", hold_id)
        row = self._s.holds[hold_id]
        if not row.claimable_by_action(unexpired_at):
            return False
        self._uow.wrote()
        row.action_id = action_id
        return True

    def apply(self, changes: Mapping[str, HoldChange]) -> None:
        existing = [i for i in changes if i in self._statement("apply").holds]
        for hold_id in existing:
            self._uow.lock_row("holds", hold_id)
        if not existing:
            return
        s = self._s
        self._uow.wrote()
        for hold_id in existing:
            row, change = s.holds[hold_id], changes[hold_id]
            row.status = str(change.status)  # a text column: the enum's value
            row.captured_amount += change.captured_amount
            if change.action_cleared:
                row.action_id = None
            _check_hold(s, row)

    def due(self, *, now: datetime, limit: int) -> list[tuple[HoldRecord, str, str]]:
        s = self._statement("due")
        # JOIN transfers: the API key of the hold's own movement. ORDER BY id LIMIT ...
        # SKIP LOCKED: holds another transaction holds are passed by.
        candidates = [
            h
            for h in sorted(s.holds.values(), key=lambda h: h.id)
            if h.due(now) is not None and h.id in s.transfers
        ]
        found: list[tuple[HoldRecord, str, str]] = []
        for hold in candidates:
            if len(found) >= limit:
                break
            if self._uow.lock_row("holds", hold.id, skip_locked=True):
                what = hold.due(now)
                assert what is not None
                found.append((hold.record(), what, s.transfers[hold.id].api_key_id))
        return found


def _cashback_status(payment: PaymentRow, status: str, hold: HoldRow | None) -> str:
    # sql_movements._cashback_status, on the joined rows.
    if not payment.cashback_amount:
        return "none"
    hold_status = None if hold is None else hold.status
    if status == "rejected" or hold_status == HoldStatus.REJECTED.value:
        return "rejected"
    if payment.cashback_hold_id is None:
        return "posted" if status == "posted" else "pending"
    return {"captured": "posted", "voided": "voided"}.get(hold_status or "", "pending")


class FakePayments(_Repository):
    table = "payments"

    def add(self, payment: NewPayment) -> None:
        s = self._statement("add")
        _require(payment.id not in s.payments, "pk_payments")
        row = PaymentRow(
            payment.id,
            payment.customer_account_id,
            payment.merchant_account_id,
            payment.amount,
            payment.rewards_account_id,
            payment.basis_points,
            payment.cashback_amount,
            payment.cashback_hold_id,
        )
        _check_payment(s, row)
        self._uow.wrote()
        s.payments[row.id] = row

    def get(self, payment_id: str) -> PaymentRecord | None:
        s = self._statement("get")
        row = s.payments.get(payment_id)
        transfer = s.transfers.get(payment_id)
        if row is None or transfer is None:  # JOIN transfers
            return None
        assert transfer.currency is not None, "a payment has the currency of its accounts"
        hold = None if row.cashback_hold_id is None else s.holds.get(row.cashback_hold_id)
        return PaymentRecord(
            id=row.id,
            status=transfer.status,
            rejection_reason=transfer.rejection_reason,
            customer_account_id=row.customer_account_id,
            merchant_account_id=row.merchant_account_id,
            amount=row.amount,
            currency=transfer.currency,
            rewards_account_id=row.rewards_account_id,
            basis_points=row.basis_points,
            cashback_amount=row.cashback_amount,
            cashback_hold_id=row.cashback_hold_id,
            cashback_status=_cashback_status(row, transfer.status, hold),
            description=transfer.description,
            metadata=copy.deepcopy(transfer.metadata),
            created_at=transfer.created_at,
            posted_at=transfer.posted_at,
            reversed_amount=transfer.reversed_amount,
        )


# ----------------------------------------------------------------------------- keys


class FakeIdempotency(_Repository):
    table = "idempotency"

    def get(
        self, api_key_id: str, key: str, *, ttl_seconds: int
    ) -> tuple[StoredResponse, float] | None:
        s = self._statement("get")
        row = s.idempotency.get((api_key_id, key))
        if row is None or row.created_at < self._now - timedelta(seconds=ttl_seconds):
            return None
        expires_in = (row.created_at + timedelta(seconds=ttl_seconds) - self._now).total_seconds()
        return (row.request_hash, row.status_code, copy.deepcopy(row.response_body)), expires_in

    def put(
        self,
        api_key_id: str,
        key: str,
        *,
        request_hash: str,
        status_code: int,
        response_body: dict[str, Any],
    ) -> None:
        self._statement("put")
        inserted = self._uow.insert_unique(
            ("idempotency_keys", api_key_id, key),
            lambda state: (api_key_id, key) in state.idempotency,
        )
        s = self._s
        _require(api_key_id in s.api_keys, "fk_idempotency_keys_api_key_id_api_keys")
        existing = s.idempotency.get((api_key_id, key))
        expired_before = self._now - timedelta(seconds=IDEMPOTENCY_TTL_SECONDS)
        if not inserted and (existing is None or existing.created_at >= expired_before):
            return  # ON CONFLICT DO UPDATE ... WHERE expired: a live response is kept
        self._uow.wrote()
        s.idempotency[(api_key_id, key)] = IdempotencyRow(
            request_hash, status_code, _json(response_body), self._now
        )

    def prune(self, *, older_than: datetime) -> int:
        s = self._statement("prune")
        old = [k for k, row in s.idempotency.items() if row.created_at < older_than]
        if old:
            self._uow.wrote()
        for k in old:
            del s.idempotency[k]
        return len(old)


class FakeApiKeys(_Repository):
    table = "api_keys"

    def add(
        self,
        *,
        id: str,
        name: str,
        scope: str,
        key_hash: bytes,
        owner: str,
        expires_at: datetime | None,
    ) -> None:
        s = self._statement("add")
        _require(scope in ("read", "write", "admin"), "ck_api_keys_scope_known")
        _require(1 <= len(owner) <= 255, "ck_api_keys_owner_length")
        _require(id not in s.api_keys, "pk_api_keys")
        _require(all(k.key_hash != key_hash for k in s.api_keys.values()), "uq_api_keys_key_hash")
        self._uow.wrote()
        s.api_keys[id] = ApiKeyRow(
            id, name, scope, key_hash, owner, self._now, expires_at=expires_at
        )

    def find_active(self, key_hash: bytes) -> ApiKey | None:
        # `expires_at > now()`: the transaction's start, as PostgreSQL's now().
        for row in self._statement("find_active").api_keys.values():
            if row.key_hash == key_hash and row.revoked_at is None:
                if row.expires_at is not None and row.expires_at <= self._now:
                    return None
                return ApiKey(row.id, Scope(row.scope), row.owner, row.expires_at)
        return None

    def get(self, key_id: str) -> ApiKeyRecord | None:
        row = self._statement("get").api_keys.get(key_id)
        return None if row is None else row.record()

    def revoke(self, key_id: str) -> bool:
        s = self._statement("revoke")
        row = s.api_keys.get(key_id)
        if row is None or row.revoked_at is not None:
            return False
        self._uow.lock_row("api_keys", key_id)
        row = self._s.api_keys[key_id]
        if row.revoked_at is not None:
            return False
        self._uow.wrote()
        row.revoked_at = self._now
        return True

    def list_page(self, *, after_id: str | None, limit: int) -> list[ApiKeyRecord]:
        rows = sorted(self._statement("list_page").api_keys.values(), key=lambda k: k.id)
        return [k.record() for k in rows if after_id is None or k.id > after_id][:limit]


class FakeCurrencies(_Repository):
    table = "currencies"

    def custom_exponent(self, code: str) -> int | None:
        return self._statement("custom_exponent").custom_currencies.get(code)

    def add_custom(self, code: str, exponent: int) -> bool:
        self._statement("add_custom")
        _require(_in_range(exponent, 0, 18), "ck_custom_currencies_exponent_range")
        if not self._uow.insert_unique(
            ("custom_currencies", code), lambda state: code in state.custom_currencies
        ):
            return False
        self._uow.wrote()
        self._s.custom_currencies[code] = exponent
        return True

    def list_custom(self) -> list[tuple[str, int]]:
        return sorted(self._statement("list_custom").custom_currencies.items())


# ----------------------------------------------------------------------------- webhooks


class FakeEndpoints(_Repository):
    table = "endpoints"

    def add(
        self,
        *,
        id: str,
        url: str,
        events: list[str],
        account_ids: list[str] | None,
        description: str | None,
        secret: str,
    ) -> None:
        s = self._statement("add")
        _require(id not in s.endpoints, "pk_webhook_endpoints")
        self._uow.wrote()
        s.endpoints[id] = EndpointRow(
            id, url, _json(events), _json(account_ids), description, secret, self._now
        )

    def get(self, endpoint_id: str) -> EndpointRecord | None:
        row = self._statement("get").endpoints.get(endpoint_id)
        return None if row is None or row.deleted_at is not None else row.record()

    def list_page(self, *, after_id: str | None, limit: int) -> list[EndpointRecord]:
        s = self._statement("list_page")
        rows = sorted((e for e in s.endpoints.values() if e.deleted_at is None), key=lambda e: e.id)
        if after_id is not None:
            rows = [e for e in rows if e.id > after_id]
        return [e.record() for e in rows[:limit]]

    def enabled(self) -> list[EndpointRecord]:
        s = self._statement("enabled")
        return [
            e.record()
            for e in sorted(s.endpoints.values(), key=lambda e: e.id)
            if e.status == EndpointStatus.ENABLED.value and e.deleted_at is None
        ]

    def update(self, endpoint_id: str, **values: Any) -> None:
        self._statement("update")
        unknown = set(values) - ENDPOINT_COLUMNS
        if unknown:
            raise FakeIntegrityError(f"webhook_endpoints has no column {sorted(unknown)}")
        self._update(endpoint_id, values)

    def _update(self, endpoint_id: str, values: Mapping[str, Any]) -> None:
        if endpoint_id not in self._s.endpoints:
            return
        self._uow.lock_row("webhook_endpoints", endpoint_id)
        row = self._s.endpoints[endpoint_id]
        self._uow.wrote()
        for name, value in values.items():
            setattr(row, name, _json(value) if name in ("events", "account_ids") else value)
        _require(row.status in ("enabled", "disabled"), "ck_webhook_endpoints_status_known")

    def record_success(self, endpoint_id: str, now: datetime) -> None:
        self._statement("record_success")
        self._update(endpoint_id, {"last_success_at": now, "failing_since": None})

    def record_failure(self, endpoint_id: str, now: datetime) -> None:
        s = self._statement("record_failure")
        row = s.endpoints.get(endpoint_id)
        if row is not None and row.failing_since is None:
            self._update(endpoint_id, {"failing_since": now})

    def lock(self, endpoint_id: str) -> EndpointRecord | None:
        s = self._statement("lock")
        if endpoint_id not in s.endpoints:
            return None
        self._uow.lock_row("webhook_endpoints", endpoint_id)
        return self._s.endpoints[endpoint_id].record()

    def disable(self, endpoint_id: str, *, reason: str) -> None:
        s = self._statement("disable")
        row = s.endpoints.get(endpoint_id)
        if row is None:
            return
        already = row.status == EndpointStatus.DISABLED.value and row.disabled_at is not None
        self._update(
            endpoint_id,
            {
                "status": EndpointStatus.DISABLED.value,
                "disabled_reason": reason,
                # clock_timestamp(): the store's clock.
                "disabled_at": row.disabled_at if already else self._store.now(),
            },
        )

    def enable(self, endpoint_id: str) -> None:
        # LOCK TABLE events IN SHARE MODE has nothing to wait for here: a unit of work
        # that finalises postings writes its events and deliveries in one step.
        self._statement("enable")
        self._update(
            endpoint_id,
            {
                "status": EndpointStatus.ENABLED.value,
                "disabled_reason": None,
                "failing_since": None,
            },
        )


class FakeEvents(_Repository):
    table = "events"

    def payload(self, event_id: str) -> str | None:
        row = self._statement("payload").events.get(event_id)
        return None if row is None else row.payload


class FakeDeliveries(_Repository):
    table = "deliveries"

    @staticmethod
    def _record(s: State, row: DeliveryRow) -> DeliveryRecord:
        return DeliveryRecord(
            id=row.id,
            event_id=row.event_id,
            event_type=s.events[row.event_id].type,
            endpoint_id=row.endpoint_id,
            status=row.status,
            attempts=row.attempts,
            last_status_code=row.last_status_code,
            last_error=row.last_error,
            next_attempt_at=row.next_attempt_at,
            created_at=row.created_at,
        )

    def get(self, delivery_id: str) -> DeliveryRecord | None:
        s = self._statement("get")
        row = s.deliveries.get(delivery_id)
        return None if row is None else self._record(s, row)

    def list_page(
        self, endpoint_id: str, *, after_id: str | None, limit: int
    ) -> list[DeliveryRecord]:
        s = self._statement("list_page")
        rows = sorted(
            (d for d in s.deliveries.values() if d.endpoint_id == endpoint_id), key=lambda d: d.id
        )
        if after_id is not None:
            rows = [d for d in rows if d.id > after_id]
        return [self._record(s, d) for d in rows[:limit]]

    def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        s = self._statement("attempts")
        return [
            AttemptRecord(a.attempted_at, a.status_code, a.error, a.duration_milliseconds)
            for a in sorted(s.attempts, key=lambda a: a.id)
            if a.delivery_id == delivery_id
        ]

    @staticmethod
    def _due(row: DeliveryRow, now: datetime) -> bool:
        return (
            row.status in RETRYABLE_DELIVERIES
            and (row.next_attempt_at is None or row.next_attempt_at <= now)
            and (row.leased_until is None or row.leased_until < now)
        )

    def _update(self, delivery_id: str, **values: Any) -> DeliveryRow | None:
        if delivery_id not in self._s.deliveries:
            return None
        self._uow.lock_row("webhook_deliveries", delivery_id)
        row = self._s.deliveries[delivery_id]
        self._uow.wrote()
        for name, value in values.items():
            setattr(row, name, value)
        _check_delivery(row)
        return row

    def claim(
        self,
        delivery_id: str,
        *,
        now: datetime,
        lease_until: datetime,
        lease_token: str,
        endpoint_concurrency_max: int,
        busy_retry_at: datetime,
    ) -> ClaimedDelivery | EndpointBusy | None:
        s = self._statement("claim")
        row = s.deliveries.get(delivery_id)
        if row is None or not self._due(row, now):
            return None
        endpoint_id = row.endpoint_id
        # The endpoint's row first, as in the SQL: it serialises the claims of one endpoint.
        self._uow.lock_row("webhook_endpoints", endpoint_id)
        s = self._s
        leases = sum(
            1
            for d in s.deliveries.values()
            if d.endpoint_id == endpoint_id and d.leased_until is not None and d.leased_until > now
        )
        self._uow.lock_row("webhook_deliveries", delivery_id)
        row = self._s.deliveries[delivery_id]
        if not self._due(row, now):  # re-checked on the row as it is once locked
            return None
        if leases >= endpoint_concurrency_max:
            self._update(delivery_id, next_attempt_at=busy_retry_at, enqueued_until=None)
            return EndpointBusy(endpoint_id, leases)
        updated = self._update(
            delivery_id,
            attempts=row.attempts + 1,
            leased_until=lease_until,
            lease_token=lease_token,
        )
        assert updated is not None
        s = self._s
        # The endpoint as it is, deleted or not: the use case decides what to do with it.
        return ClaimedDelivery(
            updated.id,
            updated.attempts,
            updated.event_id,
            s.events[updated.event_id].payload,
            s.endpoints[updated.endpoint_id].record(),
            lease_token,
        )

    def mark_enqueued(self, *, now: datetime, until: datetime, limit: int) -> list[str]:
        s = self._statement("mark_enqueued")
        due = [
            d
            for d in s.deliveries.values()
            if self._due(d, now) and (d.enqueued_until is None or d.enqueued_until < now)
        ]
        # ORDER BY next_attempt_at: NULLs last, as PostgreSQL sorts them ascending.
        due.sort(key=lambda d: (d.next_attempt_at is None, d.next_attempt_at or now))
        ids: list[str] = []
        for d in due:
            if len(ids) >= limit:
                break
            if self._uow.lock_row("webhook_deliveries", d.id, skip_locked=True):
                ids.append(d.id)
        for delivery_id in ids:
            self._update(delivery_id, enqueued_until=until)
        return ids

    def record_attempt(
        self,
        delivery_id: str,
        *,
        attempted_at: datetime,
        status_code: int | None,
        error: str | None,
        duration_milliseconds: int,
        decision: AttemptDecision,
        lease_token: str,
    ) -> bool:
        s = self._statement("record_attempt")
        row = s.deliveries.get(delivery_id)
        if row is None:
            return False
        self._uow.lock_row("webhook_deliveries", delivery_id)
        row = self._s.deliveries[delivery_id]
        if row.lease_token != lease_token:  # WHERE lease_token = %(token)s
            return False
        self._update(
            delivery_id,
            status=decision.status.value,
            next_attempt_at=decision.next_attempt_at,
            leased_until=None,
            lease_token=None,
            enqueued_until=None,
            last_status_code=status_code,
            last_error=error,
        )
        self._s.attempts.append(
            AttemptRow(
                self._store.next_attempt_id,
                delivery_id,
                attempted_at,
                status_code,
                error,
                duration_milliseconds,
            )
        )
        self._store.next_attempt_id += 1
        return True

    def abandon(self, delivery_id: str, *, error: str) -> None:
        self._statement("abandon")
        self._update(
            delivery_id,
            status=DeliveryStatus.ABANDONED.value,
            next_attempt_at=None,
            leased_until=None,
            lease_token=None,
            enqueued_until=None,
            last_error=error,
        )

    def abandon_for_endpoint(self, endpoint_id: str, *, error: str) -> None:
        s = self._statement("abandon_for_endpoint")
        for d in [
            d
            for d in s.deliveries.values()
            if d.endpoint_id == endpoint_id and d.status in RETRYABLE_DELIVERIES
        ]:
            self._update(
                d.id, status=DeliveryStatus.ABANDONED.value, next_attempt_at=None, last_error=error
            )

    def schedule_now(self, delivery_id: str, *, now: datetime, enqueued_until: datetime) -> bool:
        s = self._statement("schedule_now")
        row = s.deliveries.get(delivery_id)
        if row is None or not (row.leased_until is None or row.leased_until < now):
            return False
        self._update(
            delivery_id,
            status=DeliveryStatus.PENDING.value,
            next_attempt_at=now,
            enqueued_until=enqueued_until,
        )
        return True

    def add_missed(self, endpoint_id: str, *, since: datetime, limit: int, now: datetime) -> int:
        s = self._statement("add_missed")
        endpoint_row = s.endpoints.get(endpoint_id)
        if endpoint_row is None:
            return 0
        endpoint = endpoint_row.record()
        created = 0
        for event in sorted(s.events.values(), key=lambda e: e.id):  # ORDER BY e.id
            if created >= limit:
                break
            recorded = event.recorded_at or event.created_at
            transfer = s.transfers.get(event.transfer_id)
            if recorded < since or transfer is None:
                continue
            accounts = {
                a for a in (transfer.source_account_id, transfer.destination_account_id) if a
            }
            if not endpoint_matches(endpoint, event.type, accounts):
                continue

            def exists(state: State, event_id: str = event.id) -> bool:
                return any(
                    d.event_id == event_id and d.endpoint_id == endpoint_id
                    for d in state.deliveries.values()
                )

            # NOT EXISTS, then ON CONFLICT DO NOTHING for one another transaction inserts.
            if not self._uow.insert_unique(("webhook_deliveries", event.id, endpoint_id), exists):
                continue
            self._uow.wrote()
            delivery_id = new_id("wd")
            self._s.deliveries[delivery_id] = DeliveryRow(
                delivery_id,
                event.id,
                endpoint_id,
                next_attempt_at=now,
                enqueued_until=None,
                created_at=now,
            )
            created += 1
        return created


# ----------------------------------------------------------------------------- books


def _seconds_bigint(delta: timedelta) -> int:
    # extract(epoch ...)::bigint rounds half away from zero.
    seconds = delta.total_seconds()
    return int(seconds + 0.5) if seconds >= 0 else -int(-seconds + 0.5)


class FakeBooks(_Repository):
    """books_checks.CHECKS, rule by rule, read from one copy (one snapshot)."""

    table = "books"

    def violations(
        self, *, pending_age_max_seconds: float, delivery_overdue_max_seconds: float
    ) -> Violations:
        s = self._statement("violations")
        now = self._now
        by_account: dict[str, list[EntryRecord]] = {}
        for e in s.entries:
            by_account.setdefault(e.account_id, []).append(e)
        accounts = sorted(s.accounts.values(), key=lambda a: a.id)
        transfers = sorted(s.transfers.values(), key=lambda t: t.id)

        def total(account_id: str) -> int:
            return sum(e.amount for e in by_account.get(account_id, []))

        overdue_before = now - timedelta(seconds=delivery_overdue_max_seconds)
        reversals = _posted_reversals(s)
        return {
            "transfer_entries_do_not_sum_to_zero": _unbalanced_movements(s),
            "posted_movement_with_wrong_entry_count": _wrong_entry_counts(s, transfers),
            "entry_differs_from_its_leg": _entries_unlike_legs(s),
            "currency_entries_do_not_sum_to_zero": [
                (currency, amount)
                for currency, amount in sorted(_sums_by_currency(s).items())
                if amount
            ],
            "balance_differs_from_entries": [
                (a.id, a.balance - total(a.id)) for a in accounts if a.balance != total(a.id)
            ],
            "balance_differs_from_last_balance_after": [
                (a.id, a.balance - last.balance_after)
                for a in accounts
                if a.id in by_account
                for last in (max(by_account[a.id], key=lambda e: e.id),)
                if a.balance != last.balance_after
            ],
            "negative_balance_without_overdraft": [
                (a.id, a.balance) for a in accounts if a.balance < 0 and not a.allow_overdraft
            ],
            "available_negative_without_overdraft": [
                (a.id, a.balance - a.held_out)
                for a in accounts
                if a.balance - a.held_out < 0 and not a.allow_overdraft
            ],
            "held_differs_from_active_holds": _held_unlike_holds(s, accounts),
            "hold_differs_from_its_actions": _holds_unlike_actions(s),
            "reversed_amount_differs_from_reversals": [
                (t.id, t.reversed_amount - reversed)
                for t in transfers
                for reversed in (reversals.get(t.id, 0),)
                if t.reversed_amount != reversed
            ],
            "reversals_exceed_original": [
                (original_id, reversed - s.transfers[original_id].amount)
                for original_id, reversed in sorted(reversals.items())
                if original_id in s.transfers and reversed > s.transfers[original_id].amount
            ],
            "transfer_pending_too_long": [
                (t.id, _seconds_bigint(now - t.created_at))
                for t in transfers
                if t.status == "pending"
                and t.created_at < now - timedelta(seconds=pending_age_max_seconds)
            ],
            "transfer_quarantined": [
                (t.id, t.posting_attempts) for t in transfers if t.status == "quarantined"
            ],
            "webhook_delivery_overdue": [
                (d.id, _seconds_bigint(now - d.next_attempt_at))
                for d in sorted(s.deliveries.values(), key=lambda d: d.id)
                if d.status in RETRYABLE_DELIVERIES
                and d.next_attempt_at is not None
                and d.next_attempt_at < overdue_before
            ],
        }


def _sums_by_currency(s: State) -> dict[str, int]:
    sums: dict[str, int] = {}
    for e in s.entries:
        currency = s.accounts[e.account_id].currency
        sums[currency] = sums.get(currency, 0) + e.amount
    return sums


def _unbalanced_movements(s: State) -> list[tuple[str, int]]:
    # Per movement and currency: a transaction may move two, each balanced on its own.
    sums: dict[tuple[str, str], int] = {}
    for e in s.entries:
        key = (e.transfer_id, s.accounts[e.account_id].currency)
        sums[key] = sums.get(key, 0) + e.amount
    return [(transfer_id, total) for (transfer_id, _), total in sorted(sums.items()) if total]


def _wrong_entry_counts(s: State, transfers: list[TransferRow]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for e in s.entries:
        counts[e.transfer_id] = counts.get(e.transfer_id, 0) + 1
    wrong: list[tuple[str, int]] = []
    for t in transfers:
        if t.status != "posted" or t.kind in RESERVING_KINDS:
            expected = 0
        elif t.kind in LEGGED_KINDS:
            expected = len(s.legs.get(t.id, ()))
        else:
            expected = 2
        if counts.get(t.id, 0) != expected:
            wrong.append((t.id, counts.get(t.id, 0)))
    return wrong


def _entries_unlike_legs(s: State) -> list[tuple[str, int]]:
    by_leg = {(e.transfer_id, s.entry_legs[e.id]): e for e in s.entries}
    return [
        (f"{transfer_id} leg {index}", entry.amount - leg.amount)
        for transfer_id, legs in sorted(s.legs.items())
        for index, leg in enumerate(legs)
        for entry in (by_leg.get((transfer_id, index)),)
        if entry is not None and (entry.account_id != leg.account_id or entry.amount != leg.amount)
    ]


def _held_unlike_holds(s: State, accounts: list[AccountRow]) -> list[tuple[str, int]]:
    active = [h for h in s.holds.values() if h.status == HoldStatus.ACTIVE.value]
    wrong: list[tuple[str, int]] = []
    for a in accounts:
        out = sum(h.amount for h in active if h.source_account_id == a.id)
        in_ = sum(h.amount for h in active if h.destination_account_id == a.id)
        wrong += [(f"{a.id} held_out", a.held_out - out)] if a.held_out != out else []
        wrong += [(f"{a.id} held_in", a.held_in - in_)] if a.held_in != in_ else []
    return wrong


def _holds_unlike_actions(s: State) -> list[tuple[str, int]]:
    # A hold is settled or released by exactly one posted action; its status says which,
    # and what was captured is what that action moved.
    settled = (HoldStatus.CAPTURED.value, HoldStatus.VOIDED.value, HoldStatus.EXPIRED.value)
    wrong: list[tuple[str, int]] = []
    for h in sorted(s.holds.values(), key=lambda h: h.id):
        own = s.transfers.get(h.id)
        if own is None:  # JOIN transfers
            continue
        actions = [t for t in s.transfers.values() if t.hold_id == h.id and t.status == "posted"]
        moved = sum(t.amount for t in actions if t.kind in ("capture", "cashback"))
        if (
            len(actions) != (1 if h.status in settled else 0)
            or h.captured_amount != moved
            or (h.status == HoldStatus.REJECTED.value) != (own.status == "rejected")
            or (h.status == HoldStatus.PENDING.value) != (own.status in ("pending", "quarantined"))
        ):
            wrong.append((h.id, len(actions)))
    return wrong


def _posted_reversals(s: State) -> dict[str, int]:
    reversed_by: dict[str, int] = {}
    for t in s.transfers.values():
        if t.kind == "reversal" and t.status == "posted" and t.reverses_id is not None:
            reversed_by[t.reverses_id] = reversed_by.get(t.reverses_id, 0) + (
                t.reversal_amount or 0
            )
    return reversed_by


# ----------------------------------------------------------------------------- services


class FakeIdempotencyCache:
    """A dict standing in for Redis; values go through JSON as the Redis adapter's do."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], str] = {}
        self.ttls: dict[tuple[str, str], float] = {}
        self.gets = 0
        self.puts = 0

    def get(self, api_key_id: str, key: str) -> StoredResponse | None:
        self.gets += 1
        raw = self.data.get((api_key_id, key))
        if raw is None:
            return None
        request_hash, status_code, body = json.loads(raw)
        return request_hash, status_code, body

    def put(self, api_key_id: str, key: str, stored: StoredResponse, *, ttl_seconds: float) -> None:
        self.puts += 1
        self.data[(api_key_id, key)] = json.dumps(stored)
        self.ttls[(api_key_id, key)] = ttl_seconds

    def forget(self) -> None:
        """Lose everything, as Redis may after a restart."""
        self.data.clear()
        self.ttls.clear()


@dataclass(frozen=True)
class WakeCall:
    shard: int
    open_units_of_work: int
    # Committed PENDING transfers of that shard when the wake-up was sent.
    committed_pending: frozenset[str]


class RecordingWake:
    """A WakePosting that records what the database looked like when it was called."""

    def __init__(self, store: FakeStore, *, fail_with: Exception | None = None) -> None:
        self._store = store
        self._fail_with = fail_with
        self.calls: list[WakeCall] = []

    def __call__(self, shard: int) -> None:
        pending = frozenset(
            t.id
            for t in self._store.state.transfers.values()
            if t.status == "pending" and t.shard == shard
        )
        self.calls.append(WakeCall(shard, len(self._store.open_uows), pending))
        if self._fail_with is not None:
            raise self._fail_with

    @property
    def shards(self) -> list[int]:
        return [c.shard for c in self.calls]


class RecordingMetrics:
    """A Metrics that keeps what it was told."""

    def __init__(self) -> None:
        self.finalized: list[dict[str, int]] = []
        self.batches: list[int] = []
        self.failures: list[str] = []
        self.webhook_attempts: list[str] = []

    def transfers_finalized(
        self, counts_by_status: Mapping[str, int], latencies_seconds: Sequence[float]
    ) -> None:
        self.finalized.append(dict(counts_by_status))

    def posting_batch(self, size: int, duration_seconds: float) -> None:
        self.batches.append(size)

    def posting_failed(self, kind: str) -> None:
        self.failures.append(kind)

    def webhook_attempt(self, outcome: str) -> None:
        self.webhook_attempts.append(outcome)


def counted(store: FakeStore, name: str) -> int:
    """How many times a repository method was called, e.g. counted(store, "transfers.claim")."""
    return store.calls.count(name)


def with_status(store: FakeStore, status: str) -> list[TransferRow]:
    return [t for t in store.state.by_seq() if t.status == status]


if TYPE_CHECKING:
    # mypy checks here that the fakes implement every protocol of the ports, exactly as
    # ledger_core/adapters/sql.py checks the SQL adapters.
    from ledger_core.service_layer import ports

    def _implements_protocols(factory: FakeStore) -> ports.UnitOfWorkFactory:
        return factory

    def _uow(uow: FakeUnitOfWork) -> ports.UnitOfWork:
        return uow

    def _accounts(repository: FakeAccounts) -> ports.AccountRepository:
        return repository

    def _transfers(repository: FakeTransfers) -> ports.TransferRepository:
        return repository

    def _entries(repository: FakeEntries) -> ports.EntryRepository:
        return repository

    def _holds(repository: FakeHolds) -> ports.HoldRepository:
        return repository

    def _payments(repository: FakePayments) -> ports.PaymentRepository:
        return repository

    def _idempotency(repository: FakeIdempotency) -> ports.IdempotencyRepository:
        return repository

    def _api_keys(repository: FakeApiKeys) -> ports.ApiKeyRepository:
        return repository

    def _currencies(repository: FakeCurrencies) -> ports.CurrencyRepository:
        return repository

    def _endpoints(repository: FakeEndpoints) -> ports.EndpointRepository:
        return repository

    def _events(repository: FakeEvents) -> ports.EventRepository:
        return repository

    def _deliveries(repository: FakeDeliveries) -> ports.DeliveryRepository:
        return repository

    def _books(repository: FakeBooks) -> ports.BooksChecks:
        return repository

    def _cache(cache: FakeIdempotencyCache) -> ports.IdempotencyCache:
        return cache

    def _wake(wake: RecordingWake) -> ports.WakePosting:
        return wake

    def _metrics(metrics: RecordingMetrics) -> ports.Metrics:
        return metrics
