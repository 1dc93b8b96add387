"""Reading movements, holds, payments and balances in the past."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ledger_core.service_layer.accounts import ACCOUNT_NOT_FOUND
from ledger_core.service_layer.errors import Failure
from ledger_core.service_layer.pagination import Page, read_page
from ledger_core.service_layer.ports import UnitOfWorkFactory

MOVEMENT_NOT_FOUND = Failure("transaction_not_found", "No such transaction.")
HOLD_NOT_FOUND = Failure("hold_not_found", "No such hold.")
PAYMENT_NOT_FOUND = Failure("payment_not_found", "No such payment.")
TRANSFER_NOT_FOUND = Failure("transfer_not_found", "No such transfer.")


def get_transaction(uow_factory: UnitOfWorkFactory, movement_id: str) -> dict[str, Any] | Failure:
    """Any movement, as a transaction with its entries (with balance_after once posted)."""
    with uow_factory() as uow:
        record = uow.transfers.get_movement(movement_id)
    return MOVEMENT_NOT_FOUND if record is None else record.to_json()


def list_transactions(
    uow_factory: UnitOfWorkFactory, *, cursor: str | None, limit: int
) -> Page | Failure:
    """Every movement, deposits and transfers too, oldest first."""
    return read_page(
        uow_factory,
        cursor,
        limit,
        lambda uow, after, n: uow.transfers.list_movements(after_id=after, limit=n),
    )


def get_hold(uow_factory: UnitOfWorkFactory, hold_id: str) -> dict[str, Any] | Failure:
    with uow_factory() as uow:
        record = uow.holds.get(hold_id)
    return HOLD_NOT_FOUND if record is None else record.to_json()


def get_payment(uow_factory: UnitOfWorkFactory, payment_id: str) -> dict[str, Any] | Failure:
    with uow_factory() as uow:
        record = uow.payments.get(payment_id)
    return PAYMENT_NOT_FOUND if record is None else record.to_json()


def account_as_of(
    uow_factory: UnitOfWorkFactory, account_id: str, moment: datetime
) -> dict[str, Any] | Failure:
    """The account with its posted balance at `moment` (pending and available are of the
    present only, so they are null)."""
    with uow_factory() as uow:
        record = uow.accounts.get(account_id)
        if record is None:
            return ACCOUNT_NOT_FOUND
        posted = uow.accounts.balance_as_of(account_id, moment)
    body = record.to_json()
    body["balance"] = {"posted": posted, "pending": None, "available": None}
    body["as_of"] = moment.isoformat().replace("+00:00", "Z")
    return body
