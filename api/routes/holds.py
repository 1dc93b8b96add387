"""Two-phase holds: authorize (reserve), then capture all or part, void, or let expire."""

from __future__ import annotations

from flask import Blueprint, current_app
from flask.typing import ResponseReturnValue

from api import schemas
from api.operations import Call, keyed, operation
from api.routes.results import counted, to_http
from ledger_core.domain.model import TransferKind
from ledger_core.service_layer import movements, reads
from ledger_core.service_layer.access import Scope

bp = Blueprint("holds", __name__)
# 403 account_not_owned: a hold neither side of which is the key owner's.
ACTION = {202: schemas.Transaction, 403: None, 404: None, 409: None, 422: None}


@operation(
    bp,
    "POST",
    "/v1/holds",
    summary="Reserve funds of a source account for a destination, until captured or voided",
    scope=Scope.WRITE,
    body=schemas.HoldCreate,
    responses={202: schemas.Hold, 403: None, 404: None, 422: None},
    idempotency="required",
)
def create_hold(call: Call) -> ResponseReturnValue:
    body: schemas.HoldCreate = call.body
    services = current_app.extensions["ledger"]
    result = movements.accept_hold(
        services.uow_factory,
        services.cache,
        services.wake,
        keyed=keyed(call),
        source_account_id=body.source_account_id,
        destination_account_id=body.destination_account_id,
        amount=body.amount,
        expires_in_seconds=body.expires_in_seconds,
        description=body.description,
        metadata=body.metadata,
        shards=services.settings.posting_shards,
    )
    return to_http(counted(result, TransferKind.HOLD))


@operation(
    bp,
    "GET",
    "/v1/holds/{hold_id}",
    summary="Read a hold: its status, what was captured, when it expires",
    scope=Scope.READ,
    responses={200: schemas.Hold, 404: None},
)
def get_hold(call: Call, hold_id: str) -> ResponseReturnValue:
    return to_http(reads.get_hold(current_app.extensions["ledger"].uow_factory, hold_id))


def _act(call: Call, hold_id: str, kind: TransferKind, amount: int | None) -> ResponseReturnValue:
    services = current_app.extensions["ledger"]
    result = movements.act_on_hold(
        services.uow_factory,
        services.cache,
        services.wake,
        keyed=keyed(call),
        hold_id=hold_id,
        kind=kind,
        amount=amount,
        shards=services.settings.posting_shards,
    )
    return to_http(counted(result, kind))


@operation(
    bp,
    "POST",
    "/v1/holds/{hold_id}/capture",
    summary="Capture an active hold, all of it or part (the rest is released)",
    scope=Scope.WRITE,
    body=schemas.CaptureCreate,
    responses=ACTION,
    idempotency="required",
)
def capture_hold(call: Call, hold_id: str) -> ResponseReturnValue:
    body: schemas.CaptureCreate = call.body
    return _act(call, hold_id, TransferKind.CAPTURE, body.amount)


@operation(
    bp,
    "POST",
    "/v1/holds/{hold_id}/void",
    summary="Void an active hold: release all it reserved",
    scope=Scope.WRITE,
    body=schemas.VoidCreate,
    responses=ACTION,
    idempotency="required",
)
def void_hold(call: Call, hold_id: str) -> ResponseReturnValue:
    return _act(call, hold_id, TransferKind.VOID, None)
