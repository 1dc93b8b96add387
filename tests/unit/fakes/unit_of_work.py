"""`FakeUnitOfWork`: one transaction, its snapshot and the locks it holds."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from .accounts import FakeAccounts
from .books import FakeBooks
from .entries import FakeEntries
from .errors import FakeIntegrityError, FakeLockTimeoutError
from .keys import FakeApiKeys, FakeCurrencies, FakeIdempotency
from .movements import FakeHolds, FakePayments
from .rows import State
from .transfers import FakeTransfers
from .webhooks import FakeDeliveries, FakeEndpoints, FakeEvents

if TYPE_CHECKING:
    from .store import FakeStore


LockKey = tuple[str, ...]


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
