"""Reconciliation: do the books still balance?"""

from __future__ import annotations

from ledger_core.adapters.books_checks import run_checks
from ledger_core.service_layer.ports import UnitOfWorkFactory


def reconcile(uow_factory: UnitOfWorkFactory) -> dict[str, list[tuple[str, int]]]:
    """Violations by rule, read in one REPEATABLE READ snapshot so rules agree."""
    with uow_factory() as uow:
        uow.connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        return run_checks(uow.connection)
