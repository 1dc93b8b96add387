"""The PostgreSQL unit of work: one database transaction, with the repositories bound to it.

Hot statements are SQL text written once at module level and run with `exec_driver_sql`:
no statement is built or compiled per call, and psycopg prepares each on the server after
a few uses. Errors that pass (a lost connection, a deadlock, a timeout) leave here as
`StorageUnavailableError`, the only storage exception the use cases know.
"""

from __future__ import annotations

import hashlib
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from ledger_core.adapters.books_checks import SqlBooksChecks
from ledger_core.adapters.sql_accounts import AccountFactsCache, SqlAccountRepository
from ledger_core.adapters.sql_keys import (
    SqlApiKeyRepository,
    SqlCurrencyRepository,
    SqlIdempotencyRepository,
)
from ledger_core.adapters.sql_transfers import SqlEntryRepository, SqlTransferRepository
from ledger_core.adapters.webhook_sql import (
    DeliveryRepository,
    EndpointRepository,
    EventRepository,
)
from ledger_core.service_layer.errors import StorageUnavailableError
from ledger_core.service_layer.ports import UnitOfWork, UnitOfWorkFactory

TRY_ADVISORY_LOCK = "SELECT pg_try_advisory_xact_lock(%(key)s)"


def is_transient(error: BaseException) -> bool:
    """Worth retrying as it was: the server is away or refused for now, not for the data."""
    if isinstance(error, OperationalError | InterfaceError | PoolTimeoutError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


class LazyConnection:
    """The unit of work's connection, taken from the pool on first use: a use case that
    finds all it needs in a process cache (account facts) never touches the pool."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connection: Connection | None = None
        self._transaction: Any = None

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            try:
                self._connection = self._engine.connect()
            except Exception as error:
                if is_transient(error):
                    raise StorageUnavailableError(str(error)) from error
                raise
            self._transaction = self._connection.begin()
        return self._connection

    def exec_driver_sql(self, statement: str, parameters: Any = None) -> Any:
        return self.connection.exec_driver_sql(statement, parameters)

    def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self.connection.execute(statement, parameters)

    def scalar(self, statement: Any, parameters: Any = None) -> Any:
        return self.connection.scalar(statement, parameters)

    def scalars(self, statement: Any, parameters: Any = None) -> Any:
        return self.connection.scalars(statement, parameters)

    def commit(self) -> None:
        if self._transaction is not None:
            self._transaction.commit()

    def close(self) -> None:
        if self._connection is None:
            return
        try:
            if self._transaction.is_active:
                self._transaction.rollback()
        except Exception:  # noqa: S110 (the connection is gone; closing it below is all that is left)
            pass
        finally:
            self._connection.close()
            self._connection = None


class SqlUnitOfWork:
    """One database transaction. It rolls back unless `commit()` was called: safe by default."""

    def __init__(self, engine: Engine, facts_cache: AccountFactsCache | None = None) -> None:
        self._engine = engine
        self._facts_cache = facts_cache if facts_cache is not None else AccountFactsCache()

    @property
    def connection(self) -> Connection:
        return self._lazy.connection

    def __enter__(self) -> SqlUnitOfWork:
        self._lazy = lazy = LazyConnection(self._engine)
        # Repositories take the lazy connection (typed as one: it has what they call).
        c = cast(Connection, lazy)
        self.accounts = SqlAccountRepository(c, self._facts_cache)
        self.transfers = SqlTransferRepository(c)
        self.entries = SqlEntryRepository(c)
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
        if exc is not None and is_transient(exc):
            raise StorageUnavailableError(str(exc)) from exc

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
