"""Ledger transactions of N entries, any movement read as one, and reversals."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request
from flask.typing import ResponseReturnValue

from api import schemas
from api.operations import Call, keyed, operation, page_limit
from api.problems import ApiProblem
from api.routes.accounts import PAGING
from api.routes.results import counted, to_http
from ledger_core.domain import limits
from ledger_core.domain.model import Leg, TransferKind
from ledger_core.service_layer import movements, reads
from ledger_core.service_layer.access import Scope

bp = Blueprint("transactions", __name__)
# 403 account_not_owned: taking back what the original credited to another owner.
REVERSE = {202: schemas.Transaction, 403: None, 404: None, 409: None, 422: None}


def _refuse_too_many_entries(raw: Any) -> None:
    # Before validating ten thousand entries for nothing.
    entries = raw.get("entries") if isinstance(raw, dict) else None
    if isinstance(entries, list) and len(entries) > limits.transaction_entries_max:
        raise ApiProblem(
            "too_many_entries",
            f"A transaction has 2 to {limits.transaction_entries_max} entries; got {len(entries)}.",
        )


@operation(
    bp,
    "POST",
    "/v1/transactions",
    summary=f"Post 2 to {limits.transaction_entries_max} entries at once, all or nothing",
    scope=Scope.WRITE,
    body=schemas.TransactionCreate,
    responses={202: schemas.Transaction, 403: None, 404: None, 422: None},
    idempotency="required",
    before_validation=_refuse_too_many_entries,
)
def create_transaction(call: Call) -> ResponseReturnValue:
    body: schemas.TransactionCreate = call.body
    services = current_app.extensions["ledger"]
    result = movements.accept_transaction(
        services.uow_factory,
        services.cache,
        services.wake,
        keyed=keyed(call),
        legs=[Leg(entry.account_id, entry.amount) for entry in body.entries],
        description=body.description,
        metadata=body.metadata,
        effective_at=body.effective_at,
        shards=services.settings.posting_shards,
    )
    return to_http(counted(result, TransferKind.TRANSACTION))


@operation(
    bp,
    "GET",
    "/v1/transactions",
    summary="List every movement as a transaction with its entries, oldest first",
    scope=Scope.READ,
    responses={200: schemas.TransactionList, 400: None},
    query=PAGING,
)
def list_transactions(call: Call) -> ResponseReturnValue:
    return to_http(
        reads.list_transactions(
            current_app.extensions["ledger"].uow_factory,
            cursor=request.args.get("cursor"),
            limit=page_limit(),
        )
    )


@operation(
    bp,
    "GET",
    "/v1/transactions/{transaction_id}",
    summary="Read any movement as a transaction: its entries, with balance_after once posted",
    scope=Scope.READ,
    responses={200: schemas.Transaction, 404: None},
)
def get_transaction(call: Call, transaction_id: str) -> ResponseReturnValue:
    return to_http(
        reads.get_transaction(current_app.extensions["ledger"].uow_factory, transaction_id)
    )


def reverse(call: Call, original_id: str, of: movements.ReverseOf) -> Any:
    """Shared by every reverse route; `of` says which movements the route's resource
    names."""
    body: schemas.ReversalCreate = call.body
    services = current_app.extensions["ledger"]
    result = movements.reverse(
        services.uow_factory,
        services.cache,
        services.wake,
        keyed=keyed(call),
        original_id=original_id,
        amount=body.amount,
        reason=body.reason,
        of=of,
        shards=services.settings.posting_shards,
    )
    return to_http(counted(result, TransferKind.REVERSAL))


@operation(
    bp,
    "POST",
    "/v1/transactions/{transaction_id}/reverse",
    summary="Reverse a posted movement: a transaction in whole, any other in whole or part",
    scope=Scope.WRITE,
    body=schemas.ReversalCreate,
    responses=REVERSE,
    idempotency="required",
)
def reverse_transaction(call: Call, transaction_id: str) -> ResponseReturnValue:
    return reverse(call, transaction_id, movements.ANY_MOVEMENT)
