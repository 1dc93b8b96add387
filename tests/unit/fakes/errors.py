"""What the fake raises: the schema refused a write, a lock was never released, or the
fake cannot mirror PostgreSQL (and the record of every time it could not)."""

from __future__ import annotations

from ledger_core.service_layer.errors import StorageRefusedError, StorageUnavailableError

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
