"""Map use-case results to HTTP responses, the same way for every route."""

from __future__ import annotations

from typing import Any

import structlog
from flask import Response, jsonify

from api.problems import problem_response
from ledger_core.adapters.metrics import transfers_accepted_total
from ledger_core.domain.model import TransferKind
from ledger_core.service_layer.errors import Failure
from ledger_core.service_layer.errors import Response as ServiceResponse
from ledger_core.service_layer.pagination import Page

# Where a created resource can be polled.
LOCATIONS = {
    "transfer": "/v1/transfers/{id}",
    "transfer_batch": "/v1/transfers/batch/{id}",
    "transaction": "/v1/transactions/{id}",
    "payment": "/v1/payments/{id}",
    "hold": "/v1/holds/{id}",
}


def to_http(
    result: ServiceResponse | Failure | Page | dict[str, Any], status: int = 200
) -> Response:
    """Failures become problem documents; anything else is sent with `status`."""
    if isinstance(result, Failure):
        extra: dict[str, Any] = dict(result.extra)
        retry_after = extra.pop("retry_after_seconds", None)
        if retry_after is not None:
            extra["headers"] = {"Retry-After": str(retry_after)}
        return problem_response(result.code, result.detail, **extra)
    if isinstance(result, Page):
        return jsonify(result.to_json())
    if isinstance(result, ServiceResponse):
        response = jsonify(result.body)
        response.status_code = result.status_code
        if result.replayed:
            response.headers["Idempotent-Replayed"] = "true"
        location = LOCATIONS.get(result.body.get("object", ""))
        if location is not None:
            response.headers["Location"] = location.format(id=result.body["id"])
        return response
    response = jsonify(result)
    response.status_code = status
    return response


def counted(result: Any, kind: TransferKind) -> Any:
    """A movement accepted now (not a replay) is counted by kind, and its id joins the
    request's log lines."""
    if isinstance(result, ServiceResponse) and not result.replayed:
        transfers_accepted_total.labels(kind.value).inc()
        structlog.contextvars.bind_contextvars(transfer_id=result.body["id"])
    return result
