"""The connection of a unit of work: taken from the pool on first use, with what the
repositories call on it, and the one place that tells passing errors from lasting ones."""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from ledger_core.service_layer.errors import StorageUnavailableError


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

    def driver_rows(self, statement: str, parameters: Any) -> list[tuple[Any, ...]]:
        """Plain tuples from psycopg itself: for the thousand-row reads of posting, where
        SQLAlchemy's row objects cost more than the rows."""
        driver = self.connection.connection.driver_connection
        assert driver is not None, "a checked-out connection has its driver connection"
        try:
            with driver.cursor() as cursor:
                cursor.execute(statement, parameters)
                rows: list[tuple[Any, ...]] = cursor.fetchall()
                return rows
        except psycopg.OperationalError as error:
            # What SQLAlchemy would have done: this connection is not to be used again.
            self.connection.invalidate(error)
            raise StorageUnavailableError(str(error)) from error

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
