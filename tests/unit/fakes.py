"""In-memory stand-ins for the PostgreSQL unit of work and the Redis idempotency cache.

The fake implements exactly the repository methods the use cases call (see
ledger_core/adapters/sql.py, plus the webhook-outbox writes post_transfers now makes:
transfers.get_many, endpoints.enabled, events.add, deliveries.add_many) and enforces the
schema constraints the domain relies on, so a use case that writes books the database would
refuse fails here too. A unit of work copies the committed state on enter, works on the
copy, and swaps it in on commit: whatever was not committed is discarded, as a rolled-back
transaction would be.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from ledger_core.domain import limits
from ledger_core.domain.model import AccountState, Outcome, Posted, TransferStatus, TransferToPost
from ledger_core.domain.records import AccountRecord, EntryRecord, TransferRecord
from ledger_core.service_layer.ports import StoredResponse

TEST_API_KEY_ID = "key_test"


class FakeIntegrityError(Exception):
    """What PostgreSQL would raise: a constraint of the schema was violated."""


def _json_round_trip(value: Any) -> Any:
    # JSONB columns and Redis values hold JSON: anything else would not survive storage.
    return json.loads(json.dumps(value))


def _check_int64(value: int, what: str) -> None:
    if not limits.balance_min <= value <= limits.balance_max:
        raise FakeIntegrityError(f"{what} {value} is out of bigint range")


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


@dataclass
class TransferRow:
    record: TransferRecord
    api_key_id: str
    finalized_at: datetime | None = None


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
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass
class State:
    accounts: dict[str, AccountRow] = field(default_factory=dict)
    transfers: dict[str, TransferRow] = field(default_factory=dict)
    entries: list[EntryRecord] = field(default_factory=list)
    next_entry_id: int = 1
    idempotency: dict[tuple[str, str], IdempotencyRow] = field(default_factory=dict)
    api_keys: dict[str, ApiKeyRow] = field(default_factory=dict)
    custom_currencies: dict[str, int] = field(default_factory=dict)
    # The webhook outbox post_transfers writes in its transaction.
    endpoints: list[Any] = field(default_factory=list)  # EndpointRecord, enabled ones only
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    deliveries: list[dict[str, Any]] = field(default_factory=list)


class FakeStore:
    """The database: committed state, a clock, advisory locks, and counters for tests.

    Calling the store opens a unit of work, so the store itself is the `uow_factory`.
    """

    def __init__(self, *, api_key_ids: Iterable[str] = (TEST_API_KEY_ID,)) -> None:
        self.state = State()
        self.clock_offset = timedelta(0)
        self.advisory_locks: dict[tuple[str, ...], FakeUnitOfWork] = {}
        self.opened = 0
        self.commits = 0
        self.open_uows: list[FakeUnitOfWork] = []
        for key_id in api_key_ids:
            self.state.api_keys[key_id] = ApiKeyRow(
                key_id, "test key", "admin", key_id.encode(), self.now()
            )

    def now(self) -> datetime:
        return datetime.now(UTC) + self.clock_offset

    def advance(self, seconds: float) -> None:
        self.clock_offset += timedelta(seconds=seconds)

    def __call__(self) -> FakeUnitOfWork:
        self.opened += 1
        return FakeUnitOfWork(self)

    # Helpers for tests: direct reads and writes of the committed state.
    def set_balance(self, account_id: str, balance: int) -> None:
        self.state.accounts[account_id].balance = balance

    def balances(self) -> dict[str, int]:
        return {a.id: a.balance for a in self.state.accounts.values()}

    def transfer_status(self, transfer_id: str) -> str:
        return self.state.transfers[transfer_id].record.status


class FakeUnitOfWork:
    def __init__(self, store: FakeStore) -> None:
        self._store = store
        self._working: State | None = None
        self.committed = False
        self.closed = False
        self.accounts = FakeAccounts(self)
        self.transfers = FakeTransfers(self)
        self.entries = FakeEntries(self)
        self.idempotency = FakeIdempotency(self)
        self.api_keys = FakeApiKeys(self)
        self.currencies = FakeCurrencies(self)
        self.endpoints = FakeEndpoints(self)
        self.events = FakeEvents(self)
        self.deliveries = FakeDeliveries(self)

    @property
    def store(self) -> FakeStore:
        return self._store

    @property
    def working(self) -> State:
        if self._working is None or self.closed:
            raise RuntimeError("unit of work used outside its `with` block")
        return self._working

    def __enter__(self) -> FakeUnitOfWork:
        if self._working is not None:
            raise RuntimeError("unit of work entered twice")
        self._working = copy.deepcopy(self._store.state)
        self._store.open_uows.append(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Whatever was not committed is dropped, like a transaction rolled back on close.
        self._release_locks()
        self._store.open_uows.remove(self)
        self._working = None
        self.closed = True

    def commit(self) -> None:
        self._store.state = copy.deepcopy(self.working)
        self._store.commits += 1
        self.committed = True
        self._release_locks()

    def rollback(self) -> None:
        self._working = copy.deepcopy(self._store.state)
        self._release_locks()

    def try_advisory_lock(self, *parts: str) -> bool:
        self.working  # noqa: B018 (only inside a transaction)
        holder = self._store.advisory_locks.get(parts)
        if holder is not None and holder is not self:
            return False
        self._store.advisory_locks[parts] = self
        return True

    def _release_locks(self) -> None:
        for key in [k for k, holder in self._store.advisory_locks.items() if holder is self]:
            del self._store.advisory_locks[key]


class _Repository:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    @property
    def _s(self) -> State:
        return self._uow.working

    def _now(self) -> datetime:
        return self._uow.store.now()


class FakeAccounts(_Repository):
    def add(
        self,
        *,
        id: str,
        currency: str,
        name: str | None,
        metadata: dict[str, str],
        allow_overdraft: bool,
    ) -> None:
        if id in self._s.accounts:
            raise FakeIntegrityError(f"duplicate account id {id}")
        self._s.accounts[id] = AccountRow(
            id=id,
            currency=currency,
            name=name,
            metadata=_json_round_trip(metadata),
            allow_overdraft=allow_overdraft,
            is_system=False,
            balance=0,
            created_at=self._now(),
        )

    def ensure_system_account(self, currency: str, id: str) -> None:
        if self.system_account_id(currency) is not None:
            return
        if id in self._s.accounts:
            raise FakeIntegrityError(f"duplicate account id {id}")
        self._s.accounts[id] = AccountRow(
            id=id,
            currency=currency,
            name=f"{currency} system account",
            metadata={},
            allow_overdraft=True,
            is_system=True,
            balance=0,
            created_at=self._now(),
        )

    def system_account_id(self, currency: str) -> str | None:
        ids = [a.id for a in self._s.accounts.values() if a.currency == currency and a.is_system]
        assert len(ids) <= 1, "uq_accounts_system_currency violated"
        return ids[0] if ids else None

    def system_state(self, currency: str) -> AccountState | None:
        system_id = self.system_account_id(currency)
        return None if system_id is None else self.states([system_id])[system_id]

    def _record(self, row: AccountRow) -> AccountRecord:
        pending = [
            t.record
            for t in self._s.transfers.values()
            if t.record.status == TransferStatus.PENDING.value
        ]
        return AccountRecord(
            id=row.id,
            currency=row.currency,
            name=row.name,
            metadata=copy.deepcopy(row.metadata),
            allow_overdraft=row.allow_overdraft,
            is_system=row.is_system,
            posted=row.balance,
            pending_in=sum(t.amount for t in pending if t.destination_account_id == row.id),
            pending_out=sum(t.amount for t in pending if t.source_account_id == row.id),
            created_at=row.created_at,
        )

    def get(self, account_id: str) -> AccountRecord | None:
        row = self._s.accounts.get(account_id)
        return None if row is None else self._record(row)

    def list_page(self, *, after_id: str | None, limit: int) -> list[AccountRecord]:
        rows = sorted(self._s.accounts.values(), key=lambda a: a.id)
        if after_id is not None:
            rows = [a for a in rows if a.id > after_id]
        return [self._record(a) for a in rows[:limit]]

    def states(self, account_ids: Iterable[str]) -> dict[str, AccountState]:
        wanted = set(account_ids)
        return {
            a.id: AccountState(a.id, a.currency, a.balance, a.allow_overdraft, a.is_system)
            for a in self._s.accounts.values()
            if a.id in wanted
        }

    def lock(self, account_ids: Sequence[str]) -> dict[str, AccountState]:
        # Like the SQL adapter, the locked states leave is_system at its default.
        wanted = set(account_ids)
        return {
            a.id: AccountState(a.id, a.currency, a.balance, a.allow_overdraft)
            for a in sorted(self._s.accounts.values(), key=lambda a: a.id)
            if a.id in wanted
        }

    def set_balances(self, balances: dict[str, int]) -> None:
        for account_id, balance in balances.items():
            row = self._s.accounts.get(account_id)
            if row is None:
                continue  # an UPDATE that matches no row changes nothing
            _check_int64(balance, "balance")
            if not row.allow_overdraft and balance < 0:
                raise FakeIntegrityError(f"ck_accounts_no_overdraft: {account_id} -> {balance}")
            row.balance = balance


class FakeTransfers(_Repository):
    def add(self, record: TransferRecord, *, api_key_id: str) -> TransferRecord:
        s = self._s
        if record.id in s.transfers:
            raise FakeIntegrityError(f"duplicate transfer id {record.id}")
        for account_id in (record.source_account_id, record.destination_account_id):
            if account_id not in s.accounts:
                raise FakeIntegrityError(f"fk_transfers_account: {account_id}")
        if api_key_id not in s.api_keys:
            raise FakeIntegrityError(f"fk_transfers_api_key_id_api_keys: {api_key_id}")
        if record.kind not in ("deposit", "withdrawal", "transfer"):
            raise FakeIntegrityError(f"ck_transfers_kind_known: {record.kind}")
        if not isinstance(record.amount, int) or record.amount <= 0:
            raise FakeIntegrityError(f"ck_transfers_amount_positive: {record.amount!r}")
        _check_int64(record.amount, "amount")
        if record.source_account_id == record.destination_account_id:
            raise FakeIntegrityError("ck_transfers_distinct_accounts")
        # Only these columns are inserted; status and timestamps come from the server.
        stored = TransferRecord(
            id=record.id,
            kind=record.kind,
            status=TransferStatus.PENDING.value,
            rejection_reason=None,
            source_account_id=record.source_account_id,
            destination_account_id=record.destination_account_id,
            amount=record.amount,
            currency=record.currency,
            description=record.description,
            metadata=_json_round_trip(record.metadata),
            created_at=self._now(),
            posted_at=None,
        )
        s.transfers[record.id] = TransferRow(stored, api_key_id)
        return stored

    def get(self, transfer_id: str) -> TransferRecord | None:
        row = self._s.transfers.get(transfer_id)
        return None if row is None else row.record

    def get_many(self, transfer_ids: Sequence[str]) -> list[TransferRecord]:
        wanted = set(transfer_ids)
        return sorted(
            (t.record for t in self._s.transfers.values() if t.record.id in wanted),
            key=lambda r: r.id,
        )

    def lock_pending(self, transfer_ids: Sequence[str]) -> list[TransferToPost]:
        wanted = set(transfer_ids)
        return [
            TransferToPost(r.id, r.source_account_id, r.destination_account_id, r.amount)
            for r in sorted((t.record for t in self._s.transfers.values()), key=lambda r: r.id)
            if r.id in wanted and r.status == TransferStatus.PENDING.value
        ]

    def finalize(self, outcomes: Sequence[Outcome]) -> None:
        now = self._now()
        for outcome in outcomes:
            row = self._s.transfers.get(outcome.transfer_id)
            if row is None or row.record.status != TransferStatus.PENDING.value:
                continue
            if isinstance(outcome, Posted):
                row.record = replace(row.record, status="posted", posted_at=now)
            else:
                row.record = replace(
                    row.record, status="rejected", rejection_reason=outcome.reason.value
                )
            row.finalized_at = now

    def stale_pending_ids(self, *, older_than: datetime, limit: int) -> list[str]:
        rows = sorted(
            (
                t.record
                for t in self._s.transfers.values()
                if t.record.status == TransferStatus.PENDING.value
                and t.record.created_at is not None
                and t.record.created_at < older_than
            ),
            key=lambda r: r.created_at or datetime.min.replace(tzinfo=UTC),
        )
        return [r.id for r in rows[:limit]]

    # Test helper: backdate a transfer, as if it was accepted long ago.
    def backdate(self, transfer_id: str, seconds: float) -> None:
        row = self._s.transfers[transfer_id]
        assert row.record.created_at is not None
        row.record = replace(
            row.record, created_at=row.record.created_at - timedelta(seconds=seconds)
        )


class FakeEntries(_Repository):
    def add_posted(self, outcomes: Sequence[Outcome]) -> None:
        s = self._s
        for outcome in outcomes:
            if not isinstance(outcome, Posted):
                continue
            for entry in (outcome.debit, outcome.credit):
                if entry.amount == 0:
                    raise FakeIntegrityError("ck_entries_amount_nonzero")
                if entry.transfer_id not in s.transfers or entry.account_id not in s.accounts:
                    raise FakeIntegrityError("fk_entries")
                _check_int64(entry.amount, "entry amount")
                _check_int64(entry.balance_after, "balance_after")
                if any(
                    e.transfer_id == entry.transfer_id and e.account_id == entry.account_id
                    for e in s.entries
                ):
                    raise FakeIntegrityError("uq_entries_transfer_id_account_id")
                s.entries.append(
                    EntryRecord(
                        id=s.next_entry_id,
                        transfer_id=entry.transfer_id,
                        account_id=entry.account_id,
                        amount=entry.amount,
                        balance_after=entry.balance_after,
                        created_at=self._now(),
                    )
                )
                s.next_entry_id += 1

    def list_page(self, account_id: str, *, after_id: int | None, limit: int) -> list[EntryRecord]:
        rows = sorted(
            (e for e in self._s.entries if e.account_id == account_id), key=lambda e: e.id
        )
        if after_id is not None:
            rows = [e for e in rows if e.id > after_id]
        return rows[:limit]


class FakeIdempotency(_Repository):
    def get(
        self, api_key_id: str, key: str, *, ttl_seconds: int
    ) -> tuple[StoredResponse, float] | None:
        row = self._s.idempotency.get((api_key_id, key))
        if row is None or row.created_at < self._now() - timedelta(seconds=ttl_seconds):
            return None
        expires_in = (row.created_at + timedelta(seconds=ttl_seconds) - self._now()).total_seconds()
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
        if api_key_id not in self._s.api_keys:
            raise FakeIntegrityError(f"fk_idempotency_keys_api_key_id_api_keys: {api_key_id}")
        self._s.idempotency[(api_key_id, key)] = IdempotencyRow(
            request_hash, status_code, _json_round_trip(response_body), self._now()
        )

    def prune(self, *, older_than: datetime) -> int:
        old = [k for k, row in self._s.idempotency.items() if row.created_at < older_than]
        for k in old:
            del self._s.idempotency[k]
        return len(old)


class FakeApiKeys(_Repository):
    def add(self, *, id: str, name: str, scope: str, key_hash: bytes) -> None:
        if scope not in ("read", "write", "admin"):
            raise FakeIntegrityError(f"ck_api_keys_scope_known: {scope}")
        if id in self._s.api_keys or any(k.key_hash == key_hash for k in self._s.api_keys.values()):
            raise FakeIntegrityError("duplicate api key")
        self._s.api_keys[id] = ApiKeyRow(id, name, scope, key_hash, self._now())

    def find_active(self, key_hash: bytes) -> tuple[str, str] | None:
        for row in self._s.api_keys.values():
            if row.key_hash == key_hash and row.revoked_at is None:
                return row.id, row.scope
        return None

    # Test helper: revoke a key, as an operator would.
    def revoke(self, key_id: str) -> None:
        self._s.api_keys[key_id].revoked_at = self._now()


class FakeCurrencies(_Repository):
    def custom_exponent(self, code: str) -> int | None:
        return self._s.custom_currencies.get(code)

    def add_custom(self, code: str, exponent: int) -> bool:
        if not 0 <= exponent <= 18:
            raise FakeIntegrityError("ck_custom_currencies_exponent_range")
        if code in self._s.custom_currencies:
            return False
        self._s.custom_currencies[code] = exponent
        return True

    def list_custom(self) -> list[tuple[str, int]]:
        return sorted(self._s.custom_currencies.items())


class FakeEndpoints(_Repository):
    def enabled(self) -> list[Any]:
        return list(self._s.endpoints)


class FakeEvents(_Repository):
    def add(self, *, id: str, type: str, transfer_id: str, payload: str, now: datetime) -> None:
        if id in self._s.events:
            raise FakeIntegrityError(f"duplicate event id {id}")
        if transfer_id not in self._s.transfers:
            raise FakeIntegrityError(f"fk_events_transfer_id_transfers: {transfer_id}")
        json.loads(payload)  # stored as text, but it must be JSON
        self._s.events[id] = {
            "id": id,
            "type": type,
            "transfer_id": transfer_id,
            "payload": payload,
            "created_at": now,
        }


class FakeDeliveries(_Repository):
    def add_many(self, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            if row["event_id"] not in self._s.events:
                raise FakeIntegrityError("fk_webhook_deliveries_event_id_events")
            self._s.deliveries.append(dict(row))


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


@dataclass
class EnqueueCall:
    transfer_id: str
    committed_status: str | None  # the transfer's status in committed state, if committed
    open_units_of_work: int


class RecordingEnqueue:
    """An EnqueuePosting that records what the database looked like when it was called."""

    def __init__(self, store: FakeStore, *, fail_with: Exception | None = None) -> None:
        self._store = store
        self._fail_with = fail_with
        self.calls: list[EnqueueCall] = []

    def __call__(self, transfer_id: str) -> None:
        row = self._store.state.transfers.get(transfer_id)
        self.calls.append(
            EnqueueCall(
                transfer_id,
                None if row is None else row.record.status,
                len(self._store.open_uows),
            )
        )
        if self._fail_with is not None:
            raise self._fail_with
