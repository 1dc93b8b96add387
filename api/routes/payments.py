"""Payments with cashback: customer to merchant, rewards to customer, in one posting."""

from __future__ import annotations

from flask import Blueprint, current_app
from flask.typing import ResponseReturnValue

from api import schemas
from api.operations import Call, keyed, operation
from api.routes.results import counted, to_http
from api.routes.transactions import REVERSE, reverse
from ledger_core.domain.model import TransferKind
from ledger_core.service_layer import movements, reads
from ledger_core.service_layer.access import Scope

bp = Blueprint("payments", __name__)


@operation(
    bp,
    "POST",
    "/v1/payments",
    summary="Pay a merchant, with cashback from a rewards account (now or after a delay)",
    scope=Scope.WRITE,
    body=schemas.PaymentCreate,
    responses={202: schemas.Payment, 403: None, 404: None, 422: None},
    idempotency="required",
)
def create_payment(call: Call) -> ResponseReturnValue:
    body: schemas.PaymentCreate = call.body
    services = current_app.extensions["ledger"]
    cashback = (
        None
        if body.cashback is None
        else movements.CashbackRequest(
            body.cashback.rewards_account_id,
            body.cashback.basis_points,
            body.cashback.available_after_seconds,
        )
    )
    result = movements.accept_payment(
        services.uow_factory,
        services.cache,
        services.wake,
        keyed=keyed(call),
        customer_account_id=body.customer_account_id,
        merchant_account_id=body.merchant_account_id,
        amount=body.amount,
        cashback=cashback,
        description=body.description,
        metadata=body.metadata,
        shards=services.settings.posting_shards,
    )
    return to_http(counted(result, TransferKind.PAYMENT))


@operation(
    bp,
    "GET",
    "/v1/payments/{payment_id}",
    summary="Read a payment, its cashback and what was reversed of it",
    scope=Scope.READ,
    responses={200: schemas.Payment, 404: None},
)
def get_payment(call: Call, payment_id: str) -> ResponseReturnValue:
    return to_http(reads.get_payment(current_app.extensions["ledger"].uow_factory, payment_id))


@operation(
    bp,
    "POST",
    "/v1/payments/{payment_id}/reverse",
    summary="Refund a posted payment in whole or part (its immediate cashback in proportion)",
    scope=Scope.WRITE,
    body=schemas.ReversalCreate,
    responses=REVERSE,
    idempotency="required",
)
def reverse_payment(call: Call, payment_id: str) -> ResponseReturnValue:
    return reverse(call, payment_id, movements.PAYMENT_ONLY)
