"""Deposits, withdrawals, transfers and batches of them: accepted at once as PENDING,
posted by a worker."""

from __future__ import annotations

from collections import Counter
from typing import Any

import structlog
from flask import Blueprint, current_app
from flask.typing import ResponseReturnValue

from api import schemas
from api.operations import Call, operation
from api.problems import ApiProblem
from api.routes.results import counted, to_http
from api.routes.transactions import REVERSE, reverse
from ledger_core.adapters.metrics import transfers_accepted_total
from ledger_core.domain import limits
from ledger_core.domain.model import TransferKind
from ledger_core.service_layer import accept, movements
from ledger_core.service_layer.access import Scope
from ledger_core.service_layer.errors import Response

bp = Blueprint("transfers", __name__)
# A deposit debits only the system account: no key is refused one for whose account it is.
DEPOSITED = {202: schemas.Transfer, 404: None, 422: None}
# 403 account_not_owned: a withdrawal or transfer out of another owner's account.
ACCEPTED = {**DEPOSITED, 403: None}


def _accept(call: Call, request: accept.MovementRequest) -> ResponseReturnValue:
    services = current_app.extensions["ledger"]
    result = accept.accept_transfer(
        services.uow_factory,
        services.cache,
        services.wake,
        api_key=call.api_key,
        idempotency_key=call.idempotency_key,
        request_hash=call.request_hash,
        request=request,
        shards=services.settings.posting_shards,
        store=services.store_pending,
    )
    return to_http(counted(result, request.kind))


def _movement(kind: TransferKind, body: Any) -> accept.MovementRequest:
    if kind is TransferKind.TRANSFER:
        source, destination = body.source_account_id, body.destination_account_id
    elif kind is TransferKind.DEPOSIT:
        source, destination = None, body.account_id
    else:
        source, destination = body.account_id, None
    return accept.MovementRequest(
        kind, source, destination, body.amount, body.description, body.metadata
    )


@operation(
    bp,
    "POST",
    "/v1/deposits",
    summary="Deposit money into an account",
    scope=Scope.WRITE,
    body=schemas.MoneyMovement,
    responses=DEPOSITED,
    idempotency="required",
)
def create_deposit(call: Call) -> ResponseReturnValue:
    return _accept(call, _movement(TransferKind.DEPOSIT, call.body))


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
    return _accept(call, _movement(TransferKind.WITHDRAWAL, call.body))


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
    return _accept(call, _movement(TransferKind.TRANSFER, call.body))


def _refuse_too_many_items(raw: Any) -> None:
    # Before validating a thousand items for nothing.
    items = raw.get("items") if isinstance(raw, dict) else None
    if isinstance(items, list) and len(items) > limits.batch_items_max:
        raise ApiProblem(
            "too_many_items",
            f"A batch holds at most {limits.batch_items_max} items; got {len(items)}.",
        )


@operation(
    bp,
    "POST",
    "/v1/transfers/batch",
    summary=f"Accept up to {limits.batch_items_max} deposits, withdrawals and transfers at once",
    scope=Scope.WRITE,
    body=schemas.BatchCreate,
    responses={202: schemas.TransferBatch, 403: None, 404: None, 413: None, 422: None},
    idempotency="required",
    body_size_max_bytes=limits.batch_request_body_size_max_bytes,
    before_validation=_refuse_too_many_items,
)
def create_batch(call: Call) -> ResponseReturnValue:
    body: schemas.BatchCreate = call.body
    services = current_app.extensions["ledger"]
    result = accept.accept_batch(
        services.uow_factory,
        services.wake,
        api_key=call.api_key,
        idempotency_key=call.idempotency_key,
        request_hash=call.request_hash,
        atomic=body.atomic,
        requests=[_movement(TransferKind(item.kind), item) for item in body.items],
        shards=services.settings.posting_shards,
    )
    if isinstance(result, Response) and not result.replayed:
        for kind, count in Counter(item.kind for item in body.items).items():
            transfers_accepted_total.labels(kind).inc(count)
        structlog.contextvars.bind_contextvars(batch_id=result.body["id"])
    return to_http(result)


@operation(
    bp,
    "GET",
    "/v1/transfers/batch/{batch_id}",
    summary="Read a batch: its status, counts by status, and every item",
    scope=Scope.READ,
    responses={200: schemas.TransferBatch, 404: None},
)
def get_batch(call: Call, batch_id: str) -> ResponseReturnValue:
    return to_http(accept.get_batch(current_app.extensions["ledger"].uow_factory, batch_id))


@operation(
    bp,
    "GET",
    "/v1/transfers/{transfer_id}",
    summary="Read a transfer and its status",
    scope=Scope.READ,
    responses={200: schemas.Transfer, 404: None},
)
def get_transfer(call: Call, transfer_id: str) -> ResponseReturnValue:
    return to_http(accept.get_transfer(current_app.extensions["ledger"].uow_factory, transfer_id))


@operation(
    bp,
    "POST",
    "/v1/transfers/{transfer_id}/reverse",
    summary="Reverse a posted deposit, withdrawal, transfer or capture, in whole or part",
    scope=Scope.WRITE,
    body=schemas.ReversalCreate,
    responses=REVERSE,
    idempotency="required",
)
def reverse_transfer(call: Call, transfer_id: str) -> ResponseReturnValue:
    return reverse(call, transfer_id, movements.SOURCE_TO_DESTINATION)
