"""The PostgreSQL unit of work: one database transaction, with the repositories bound to it.

Hot statements are SQL text written once at module level and run with `exec_driver_sql`:
no statement is built or compiled per call, and psycopg prepares each on the server after
a few uses. Errors that pass (a lost connection, a deadlock, a timeout) leave here as
`StorageUnavailableError`, the only storage exception the use cases know.
"""

from __future__ import annotations

import hashlib
from types import TracebackType
from typing import TYPE_CHECKING

import psycopg
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from ledger_core.adapters.books_checks import SqlBooksChecks
from ledger_core.adapters.sql_accounts import AccountFactsCache, SqlAccountRepository
from ledger_core.adapters.sql_connection import LazyConnection, is_transient
from ledger_core.adapters.sql_keys import (
    SqlApiKeyRepository,
    SqlCurrencyRepository,
    SqlIdempotencyRepository,
)
from ledger_core.adapters.sql_movements import SqlHoldRepository, SqlPaymentRepository
from ledger_core.adapters.sql_transfers import SqlEntryRepository, SqlTransferRepository
from ledger_core.adapters.webhook_sql import (
    DeliveryRepository,
    EndpointRepository,
    EventRepository,
)
from ledger_core.service_layer.errors import StorageRefusedError, StorageUnavailableError
from ledger_core.service_layer.ports import UnitOfWork, UnitOfWorkFactory

TRY_ADVISORY_LOCK = "SELECT pg_try_advisory_xact_lock(%(key)s)"


class SqlUnitOfWork:
    """One database transaction. It rolls back unless `commit()` was called: safe by default."""

    def __init__(self, engine: Engine, facts_cache: AccountFactsCache | None = None) -> None:
        self._engine = engine
        self._facts_cache = facts_cache if facts_cache is not None else AccountFactsCache()

    @property
    def connection(self) -> Connection:
        return self._lazy.connection

    def __enter__(self) -> SqlUnitOfWork:
        self._lazy = c = LazyConnection(self._engine)
        self.accounts = SqlAccountRepository(c, self._facts_cache)
        self.transfers = SqlTransferRepository(c)
        self.entries = SqlEntryRepository(c)
        self.holds = SqlHoldRepository(c)
        self.payments = SqlPaymentRepository(c)
        self.idempotency = SqlIdempotencyRepository(c)
        self.api_keys = SqlApiKeyRepository(c)
        self.currencies = SqlCurrencyRepository(c)
        self.endpoints = EndpointRepository(c)
        self.events = EventRepository(c)
        self.deliveries = DeliveryRepository(c)
        self.books = SqlBooksChecks(c)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._lazy.close()
        if exc is None or isinstance(exc, StorageUnavailableError | StorageRefusedError):
            return
        if is_transient(exc):
            raise StorageUnavailableError(str(exc)) from exc
        if isinstance(exc, DBAPIError | psycopg.Error):
            raise StorageRefusedError(str(exc)) from exc

    def commit(self) -> None:
        self._lazy.commit()

    def try_advisory_lock(self, *parts: str) -> bool:
        """Take a transaction-scoped advisory lock on the given key without waiting."""
        key = int.from_bytes(
            hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest(),
            "big",
            signed=True,
        )
        return bool(self._lazy.exec_driver_sql(TRY_ADVISORY_LOCK, {"key": key}).scalar())


class SqlUnitOfWorkFactory:
    """Opens units of work on one engine; what they cache (account facts) lives here, for
    the life of the process."""

    def __init__(self, engine: Engine, facts_cache: AccountFactsCache | None = None) -> None:
        self.engine = engine
        self.facts_cache = facts_cache if facts_cache is not None else AccountFactsCache()

    def __call__(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine, self.facts_cache)


if TYPE_CHECKING:
    # mypy checks here that the SQL adapters implement every protocol of the unit of work.
    def _implements_protocols(factory: SqlUnitOfWorkFactory) -> UnitOfWorkFactory:
        return factory

    def _uow(uow: SqlUnitOfWork) -> UnitOfWork:
        return uow
