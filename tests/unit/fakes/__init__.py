"""In-memory stand-ins for the PostgreSQL unit of work, the Redis idempotency cache, the
posting wake-ups and the metrics.

`FakeStore` is a `UnitOfWorkFactory` and `FakeUnitOfWork` a `UnitOfWork`: mypy checks both
against `ledger_core/service_layer/ports.py` (see `conformance.py`), as it checks the
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

from .doubles import (
    FakeIdempotencyCache,
    RecordingMetrics,
    RecordingWake,
    WakeCall,
    counted,
    with_status,
)
from .errors import LIMITATIONS_HIT, FakeIntegrityError, FakeLimitationError, FakeLockTimeoutError
from .rows import HoldRow, State, TransferRow
from .store import TEST_API_KEY, TEST_API_KEY_ID, FakeStore, admin_key
from .unit_of_work import FakeUnitOfWork

# What the unit tests import (`from fakes import ...`), wherever it lives in the package.
__all__ = [
    "LIMITATIONS_HIT",
    "TEST_API_KEY",
    "TEST_API_KEY_ID",
    "FakeIdempotencyCache",
    "FakeIntegrityError",
    "FakeLimitationError",
    "FakeLockTimeoutError",
    "FakeStore",
    "FakeUnitOfWork",
    "HoldRow",
    "RecordingMetrics",
    "RecordingWake",
    "State",
    "TransferRow",
    "WakeCall",
    "admin_key",
    "counted",
    "with_status",
]
