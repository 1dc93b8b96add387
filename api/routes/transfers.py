"""Deposits, withdrawals and transfers: accepted at once as PENDING, posted by a worker."""

from __future__ import annotations

import structlog
from flask import Blueprint, current_app
from flask.typing import ResponseReturnValue

from api import schemas
from api.operations import Call, operation
from api.routes.results import to_http
from ledger_core.adapters.metrics import transfers_accepted_total
from ledger_core.domain.model import TransferKind
from ledger_core.service_layer import ledger
from ledger_core.service_layer.access import Scope
from ledger_core.service_layer.errors import Response

bp = Blueprint("transfers", __name__)
ACCEPTED = {202: schemas.Transfer, 404: None, 409: None, 422: None}


def _accept(
    call: Call,
    kind: TransferKind,
    source_account_id: str | None,
    destination_account_id: str | None,
) -> ResponseReturnValue:
    services = current_app.extensions["ledger"]
    result = ledger.accept_transfer(
        services.uow_factory,
        services.cache,
        services.enqueue,
        api_key_id=call.api_key_id,
        idempotency_key=call.idempotency_key,
        request_hash=call.request_hash,
        kind=kind,
        source_account_id=source_account_id,
        destination_account_id=destination_account_id,
        amount=call.body.amount,
        description=call.body.description,
        metadata=call.body.metadata,
    )
    if isinstance(result, Response) and not result.replayed:
        transfers_accepted_total.labels(kind.value).inc()
        structlog.contextvars.bind_contextvars(transfer_id=result.body["id"])
    return to_http(result)


@operation(
    bp,
    "POST",
    "/v1/deposits",
    summary="Deposit money into an account",
    scope=Scope.WRITE,
    body=schemas.MoneyMovement,
    responses=ACCEPTED,
    idempotency="required",
)
def create_deposit(call: Call) -> ResponseReturnValue:
    return _accept(call, TransferKind.DEPOSIT, None, call.body.account_id)


@operation(
    bp,
    "POST",
    "/v1/withdrawals",
    summary="Withdraw money from an account",
    scope=Scope.WRITE,
    body=schemas.MoneyMovement,
    responses=ACCEPTED,
    idempotency="required",
)
def create_withdrawal(call: Call) -> ResponseReturnValue:
    return _accept(call, TransferKind.WITHDRAWAL, call.body.account_id, None)


@operation(
    bp,
    "POST",
    "/v1/transfers",
    summary="Move money between two accounts of one currency",
    scope=Scope.WRITE,
    body=schemas.TransferCreate,
    responses=ACCEPTED,
    idempotency="required",
)
def create_transfer(call: Call) -> ResponseReturnValue:
    return _accept(
        call, TransferKind.TRANSFER, call.body.source_account_id, call.body.destination_account_id
    )


@operation(
    bp,
    "GET",
    "/v1/transfers/{transfer_id}",
    summary="Read a transfer and its status",
    scope=Scope.READ,
    responses={200: schemas.Transfer, 404: None},
)
def get_transfer(call: Call, transfer_id: str) -> ResponseReturnValue:
    return to_http(ledger.get_transfer(current_app.extensions["ledger"].uow_factory, transfer_id))
