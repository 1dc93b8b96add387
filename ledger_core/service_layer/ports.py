"""What the use cases need from the outside world, as protocols the adapters implement.

The SQL adapters and the in-memory fakes of the unit tests both implement these, and mypy
checks both against them, so a fake cannot drift from what the SQL does.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol

from ledger_core.domain.access import ApiKey, ApiKeyRecord
from ledger_core.domain.model import (
    AccountFacts,
    AccountState,
    HoldChange,
    HoldState,
    Leg,
    OriginalState,
    Outcome,
)
from ledger_core.domain.movement_records import HoldRecord, PaymentRecord, TransactionRecord
from ledger_core.domain.records import (
    AccountRecord,
    AttemptRecord,
    BatchRecord,
    DeliveryRecord,
    EndpointRecord,
    EntryRecord,
    TransferRecord,
)
from ledger_core.domain.webhooks import AttemptDecision

StoredResponse = tuple[str, int, dict[str, Any]]  # request hash, status code, body


# ----------------------------------------------------------------------------- records in


@dataclass(frozen=True, slots=True)
class NewTransfer:
    """A movement to store as PENDING. A transaction or a payment has its `legs` and no
    source or destination; every other kind has those two accounts."""

    id: str
    kind: str
    source_account_id: str | None
    destination_account_id: str | None
    amount: int
    currency: str | None
    description: str | None
    metadata: dict[str, str]
    shard: int = 0
    group_id: str | None = None
    legs: tuple[Leg, ...] = ()
    hold_id: str | None = None
    reverses_id: str | None = None
    reversal_amount: int | None = None
    effective_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class NewHold:
    id: str
    source_account_id: str
    destination_account_id: str
    amount: int
    currency: str
    expires_at: datetime | None
    capture_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class NewPayment:
    id: str
    customer_account_id: str
    merchant_account_id: str
    amount: int
    rewards_account_id: str | None
    basis_points: int | None
    cashback_amount: int
    cashback_hold_id: str | None


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """A transfer to store under an Idempotency-Key, unless the key already holds one."""

    transfer: NewTransfer
    api_key_id: str
    # None for a movement stored with another under that one's key (a payment's cashback).
    idempotency_key: str | None
    request_hash: str | None


@dataclass(frozen=True, slots=True)
class NewBatch:
    id: str
    api_key_id: str
    idempotency_key: str
    request_hash: str
    atomic: bool
    items: list[NewTransfer]


@dataclass(frozen=True, slots=True)
class KeyedRecord:
    """What an Idempotency-Key already created, with the hash of the request that did."""

    request_hash: str
    record: TransferRecord | BatchRecord | TransactionRecord


@dataclass(frozen=True, slots=True)
class ClaimedTransfer:
    """What posting needs of a claimed PENDING transfer, and no more: a batch holds a
    thousand of them."""

    id: str
    source_account_id: str | None
    destination_account_id: str | None
    amount: int
    group_id: str | None
    created_at: datetime
    kind: str = "transfer"
    hold_id: str | None = None
    reverses_id: str | None = None
    reversal_amount: int = 0
    # A transaction's or a payment's legs; empty for the two-account kinds.
    legs: tuple[Leg, ...] = ()


@dataclass(frozen=True, slots=True)
class Claim:
    """PENDING transfers locked by one posting transaction, atomic groups whole and
    contiguous, in acceptance order; `now` is the transaction's timestamp. `full` says the
    claim stopped at its limit, so more may be waiting."""

    transfers: list[ClaimedTransfer]
    now: datetime
    full: bool = False


@dataclass(frozen=True, slots=True)
class Outbox:
    """When the outbox rows are written (the posting's time, or an injected clock's) and
    how long a queued delivery task is trusted before the scheduler enqueues another."""

    time: datetime
    requeue_after_seconds: float


@dataclass(frozen=True, slots=True)
class BroughtEvent:
    """The event of a movement other than a two-account transfer, built by the worker:
    its id, its payload, and the accounts endpoints filter it on."""

    event_id: str
    payload: str
    accounts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    delivery_id: str
    attempts: int
    event_id: str
    payload: str
    endpoint: EndpointRecord
    # Drawn by the claim: recording the attempt needs it (see record_attempt).
    lease_token: str


@dataclass(frozen=True, slots=True)
class EndpointBusy:
    """A claim refused because the delivery's endpoint has as many live leases as its cap
    allows: the delivery was left due a little later, and no attempt was counted."""

    endpoint_id: str
    leases: int


Violations = dict[str, list[tuple[str, int]]]


# ----------------------------------------------------------------------------- repositories


class AccountRepository(Protocol):
    def add(
        self,
        *,
        id: str,
        currency: str,
        name: str | None,
        metadata: dict[str, str],
        allow_overdraft: bool,
        owner: str | None,
    ) -> None: ...

    def ensure_system_account(self, currency: str, id: str) -> None: ...

    def get(self, account_id: str) -> AccountRecord | None: ...

    def list_page(self, *, after_id: str | None, limit: int) -> list[AccountRecord]: ...

    def facts(self, account_ids: Collection[str]) -> dict[str, AccountFacts]:
        """The accounts among these ids that exist, without locks (what never changes,
        their owner included)."""
        ...

    def system_facts(self, currency: str) -> AccountFacts | None: ...

    def lock(self, account_ids: Collection[str]) -> dict[str, AccountState]:
        """Lock the accounts in ascending id order, so that two postings never deadlock."""
        ...

    def set_balances(
        self, balances: Mapping[str, int], held: Mapping[str, tuple[int, int]] | None = None
    ) -> None:
        """Write new balances and (held_out, held_in) pairs, together: the no-overdraft
        check holds at the end of a batch, not between the two."""
        ...

    def balance_as_of(self, account_id: str, moment: datetime) -> int:
        """The posted balance at `moment`: the balance_after of its last entry at or
        before it (0 before the first)."""
        ...


class TransferRepository(Protocol):
    def add_pending(self, writes: Sequence[PendingWrite]) -> dict[str, TransferRecord]:
        """Store PENDING transfers, each unless its key already created one (a unique
        constraint decides, also between concurrent requests); return the stored ones by
        transfer id."""
        ...

    def add_batch(self, batch: NewBatch) -> BatchRecord | None:
        """Store a batch and its PENDING transfers, or None if its key already made one."""
        ...

    def by_idempotency_keys(
        self, keys: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], KeyedRecord]:
        """What each (API key id, Idempotency-Key) created, for the keys that exist."""
        ...

    def batch_by_idempotency_key(self, api_key_id: str, key: str) -> KeyedRecord | None: ...

    def get(self, transfer_id: str) -> TransferRecord | None: ...

    def get_batch(self, batch_id: str) -> BatchRecord | None: ...

    def claim(self, *, shard: int, limit: int, only_ids: Sequence[str] | None = None) -> Claim:
        """Lock claimable PENDING transfers (skipping those another posting holds), oldest
        first, with the rest of every atomic group whose head is claimed: at most `limit`
        transfers, unless the first group alone is bigger."""
        ...

    def finalize(
        self,
        outcomes: Sequence[Outcome],
        *,
        now: datetime,
        outbox: Outbox,
        payloads: Mapping[str, BroughtEvent] | None = None,
    ) -> list[str]:
        """Write each outcome's final status (posted at `now`) and, in the same statement,
        the webhook outbox: one event per movement (`EVENT_TYPES`), one delivery per enabled
        endpoint that matches it (`endpoint_matches`). A two-account transfer's payload is
        built by the statement (`event_payload`); other movements bring theirs, in
        `payloads` by transfer id. Returns the ids of the deliveries, to enqueue once the
        transaction commits."""
        ...

    def lock_originals(self, transfer_ids: Collection[str]) -> dict[str, OriginalState]:
        """Lock the posted movements that reversals reverse, in ascending id order."""
        ...

    def reversing(self, original_id: str) -> int:
        """What the PENDING reversals of this movement take back, together."""
        ...

    def set_reversed(self, reversed_amounts: Mapping[str, int]) -> None: ...

    def movements(self, transfer_ids: Sequence[str]) -> dict[str, TransactionRecord]:
        """Movements by id, each as a transaction with its entries."""
        ...

    def get_movement(self, transfer_id: str) -> TransactionRecord | None:
        """Any movement as a transaction with its entries (planned or posted)."""
        ...

    def list_movements(self, *, after_id: str | None, limit: int) -> list[TransactionRecord]: ...

    def record_posting_failure(
        self,
        transfer_ids: Sequence[str],
        *,
        error: str,
        attempts_max: int,
        retry_delays_seconds: Sequence[float],
    ) -> list[str]:
        """Count a failed posting attempt; return the ids that this made quarantined."""
        ...

    def stale_shards(self, *, older_than: datetime) -> dict[int, int]:
        """Claimable PENDING transfers accepted before `older_than` (due for another
        try, if one failed), counted by shard."""
        ...

    def release_quarantined_ids(self, transfer_id: str) -> list[str]:
        """Make a quarantined transfer PENDING again with a fresh count of attempts, with
        the rest of its atomic group; return the ids released."""
        ...


class HoldRepository(Protocol):
    def add(self, hold: NewHold) -> None: ...

    def get(self, hold_id: str) -> HoldRecord | None: ...

    def lock(self, hold_ids: Collection[str]) -> dict[str, HoldState]:
        """Lock the holds in ascending id order."""
        ...

    def claim_action(
        self, hold_id: str, action_id: str, *, unexpired_at: datetime | None = None
    ) -> bool:
        """Give `action_id` the one right to settle or release an active hold; False if
        the hold is not active, another action has it, or (given `unexpired_at`) it
        expired by then, even if beat has not expired it yet."""
        ...

    def apply(self, changes: Mapping[str, HoldChange]) -> None: ...

    def due(self, *, now: datetime, limit: int) -> list[tuple[HoldRecord, str, str]]:
        """Active holds with no action whose expiry or cashback time has come, each with
        what is due ("expire" or "cashback") and the API key that created it; locked,
        skipping those another transaction holds."""
        ...


class PaymentRepository(Protocol):
    def add(self, payment: NewPayment) -> None: ...

    def get(self, payment_id: str) -> PaymentRecord | None: ...


class EntryRepository(Protocol):
    def add_posted(self, outcomes: Sequence[Outcome]) -> None: ...

    def list_page(
        self,
        account_id: str,
        *,
        after_id: int | None,
        limit: int,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> list[EntryRecord]: ...


class IdempotencyRepository(Protocol):
    def get(
        self, api_key_id: str, key: str, *, ttl_seconds: int
    ) -> tuple[StoredResponse, float] | None: ...

    def put(
        self,
        api_key_id: str,
        key: str,
        *,
        request_hash: str,
        status_code: int,
        response_body: dict[str, Any],
    ) -> None: ...

    def prune(self, *, older_than: datetime) -> int: ...


class ApiKeyRepository(Protocol):
    def add(
        self,
        *,
        id: str,
        name: str,
        scope: str,
        key_hash: bytes,
        owner: str,
        expires_at: datetime | None,
    ) -> None: ...

    def find_active(self, key_hash: bytes) -> ApiKey | None:
        """The key with this hash unless it is revoked or past its `expires_at` (by the
        database's clock)."""
        ...

    def get(self, key_id: str) -> ApiKeyRecord | None: ...

    def revoke(self, key_id: str) -> bool:
        """Set `revoked_at` of a key that is not revoked yet; False if none was."""
        ...

    def list_page(self, *, after_id: str | None, limit: int) -> list[ApiKeyRecord]: ...


class CurrencyRepository(Protocol):
    def custom_exponent(self, code: str) -> int | None: ...

    def add_custom(self, code: str, exponent: int) -> bool: ...

    def list_custom(self) -> list[tuple[str, int]]: ...


class EndpointRepository(Protocol):
    def add(
        self,
        *,
        id: str,
        url: str,
        events: list[str],
        account_ids: list[str] | None,
        description: str | None,
        secret: str,
    ) -> None: ...

    def get(self, endpoint_id: str) -> EndpointRecord | None: ...

    def list_page(self, *, after_id: str | None, limit: int) -> list[EndpointRecord]: ...

    def enabled(self) -> list[EndpointRecord]: ...

    def update(self, endpoint_id: str, **values: Any) -> None: ...

    def record_success(self, endpoint_id: str, now: datetime) -> None: ...

    def record_failure(self, endpoint_id: str, now: datetime) -> None: ...

    def lock(self, endpoint_id: str) -> EndpointRecord | None:
        """Lock the endpoint's row and read it (None if deleted). Whatever locks an endpoint
        and some of its deliveries locks the endpoint first, so that an attempt being
        recorded and a disable on 410 never deadlock."""
        ...

    def disable(self, endpoint_id: str, *, reason: str) -> None:
        """Disable it for `reason`; `disabled_at` becomes the database's clock (kept if it
        was disabled already), to compare with `events.recorded_at` on enabling."""
        ...

    def enable(self, endpoint_id: str) -> None:
        """Enable it, and wait out every posting still writing events: once this
        transaction commits, an event finalised later gets its delivery from the posting
        itself, and one finalised before is visible to the next transaction (to replay)."""
        ...


class EventRepository(Protocol):
    def payload(self, event_id: str) -> str | None: ...


class DeliveryRepository(Protocol):
    def get(self, delivery_id: str) -> DeliveryRecord | None: ...

    def list_page(
        self, endpoint_id: str, *, after_id: str | None, limit: int
    ) -> list[DeliveryRecord]: ...

    def attempts(self, delivery_id: str) -> list[AttemptRecord]: ...

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
        """Lease the delivery for one attempt (counted now) if it is due and unleased, and
        its endpoint has fewer live leases than `endpoint_concurrency_max` (decided under
        the endpoint's row lock, taken first). At the cap: make it due at `busy_retry_at`,
        clear its queued mark, count nothing, and say so. None: not due, or leased."""
        ...

    def mark_enqueued(self, *, now: datetime, until: datetime, limit: int) -> list[str]: ...

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
        """Record the attempt and apply the decision, if the delivery is still leased with
        `lease_token`; False (nothing written) when the lease passed to another worker."""
        ...

    def abandon(self, delivery_id: str, *, error: str) -> None: ...

    def abandon_for_endpoint(self, endpoint_id: str, *, error: str) -> None: ...

    def schedule_now(
        self, delivery_id: str, *, now: datetime, enqueued_until: datetime
    ) -> bool: ...

    def add_missed(self, endpoint_id: str, *, since: datetime, limit: int, now: datetime) -> int:
        """Create a delivery, due `now`, for each event recorded since `since` that the
        endpoint matches (`endpoint_matches`, against the transfer's accounts) and has none
        for: at most `limit`, oldest first. Returns how many were created."""
        ...


class BooksChecks(Protocol):
    def violations(
        self, *, pending_age_max_seconds: float, delivery_overdue_max_seconds: float
    ) -> Violations:
        """Every reconciliation rule's violations, read in one consistent snapshot."""
        ...


class UnitOfWork(Protocol):
    """One database transaction. It rolls back unless `commit()` was called."""

    @property
    def accounts(self) -> AccountRepository: ...

    @property
    def transfers(self) -> TransferRepository: ...

    @property
    def entries(self) -> EntryRepository: ...

    @property
    def holds(self) -> HoldRepository: ...

    @property
    def payments(self) -> PaymentRepository: ...

    @property
    def idempotency(self) -> IdempotencyRepository: ...

    @property
    def api_keys(self) -> ApiKeyRepository: ...

    @property
    def currencies(self) -> CurrencyRepository: ...

    @property
    def endpoints(self) -> EndpointRepository: ...

    @property
    def events(self) -> EventRepository: ...

    @property
    def deliveries(self) -> DeliveryRepository: ...

    @property
    def books(self) -> BooksChecks: ...

    def __enter__(self) -> UnitOfWork: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    def commit(self) -> None: ...

    def try_advisory_lock(self, *parts: str) -> bool:
        """Take a transaction-scoped lock on the key without waiting; False if held."""
        ...


# Opens a unit of work: `with uow_factory() as uow: ...; uow.commit()`.
UnitOfWorkFactory = Callable[[], UnitOfWork]


# ----------------------------------------------------------------------------- services


class IdempotencyCache(Protocol):
    """A fast copy of stored idempotent responses. PostgreSQL stays the source of truth,
    so every method may fail or forget without changing an answer."""

    def get(self, api_key_id: str, key: str) -> StoredResponse | None: ...

    def put(
        self, api_key_id: str, key: str, stored: StoredResponse, *, ttl_seconds: float
    ) -> None: ...


# Stores one PENDING transfer, or finds what its key created before. The API groups the
# writes of concurrent requests into one transaction; elsewhere each is its own.
StorePending = Callable[[PendingWrite], "TransferRecord | KeyedRecord"]

# Tells the posting workers of a shard that PENDING transfers were committed. Called only
# after the commit; must not block the caller (the sweeper covers a wake-up that is lost).
WakePosting = Callable[[int], None]

# Publishes delivery tasks. Called only after the deliveries' transaction committed.
EnqueueDeliveries = Callable[[list[str]], None]


class UrlGuard(Protocol):
    """Says why a webhook URL may not be called (scheme, non-public address), or None."""

    def check(self, url: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class AttemptResult:
    status_code: int | None
    error: str | None
    duration_milliseconds: int


class WebhookSender(Protocol):
    def send(
        self, url: str, *, message_id: str, payload: str, secrets: list[str], timestamp: datetime
    ) -> AttemptResult: ...


class Metrics(Protocol):
    """What the use cases report; the Prometheus adapter implements it."""

    def transfers_finalized(
        self, counts_by_status: Mapping[str, int], latencies_seconds: Sequence[float]
    ) -> None: ...

    def posting_batch(self, size: int, duration_seconds: float) -> None: ...

    def posting_failed(self, kind: str) -> None: ...

    def webhook_attempt(self, outcome: str) -> None: ...


class NullMetrics:
    def transfers_finalized(
        self, counts_by_status: Mapping[str, int], latencies_seconds: Sequence[float]
    ) -> None:
        pass

    def posting_batch(self, size: int, duration_seconds: float) -> None:
        pass

    def posting_failed(self, kind: str) -> None:
        pass

    def webhook_attempt(self, outcome: str) -> None:
        pass


NULL_METRICS = NullMetrics()


class NullIdempotencyCache:
    """No cache: every request goes to PostgreSQL (tools, tests, Redis-less setups)."""

    def get(self, api_key_id: str, key: str) -> StoredResponse | None:
        return None

    def put(self, api_key_id: str, key: str, stored: StoredResponse, *, ttl_seconds: float) -> None:
        pass


def no_wake(shard: int) -> None:
    """For tools that post explicitly (tests, benchmarks): nobody to wake."""
