"""Errors as RFC 9457 problem details, with one table from code to HTTP status."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from flask import Response, json

PROBLEM_CONTENT_TYPE = "application/problem+json"

# Every machine-readable error code the API can answer with, and its HTTP status.
STATUS_BY_CODE: dict[str, int] = {
    "malformed_json": 400,
    "json_too_deep": 400,
    "idempotency_key_missing": 400,
    "idempotency_key_invalid": 400,
    "invalid_cursor": 400,
    "invalid_query": 400,
    "unauthorized": 401,
    "forbidden": 403,
    # A write key names, as one to debit, an account that is not its owner's.
    "account_not_owned": 403,
    "not_found": 404,
    "account_not_found": 404,
    "transfer_not_found": 404,
    "batch_not_found": 404,
    "webhook_endpoint_not_found": 404,
    "webhook_delivery_not_found": 404,
    "event_not_found": 404,
    "transaction_not_found": 404,
    "hold_not_found": 404,
    "payment_not_found": 404,
    "hold_not_active": 409,
    "hold_is_cashback": 409,
    "not_reversible": 409,
    "delivery_in_progress": 409,
    "webhook_endpoint_disabled": 409,
    "method_not_allowed": 405,
    "idempotency_key_in_use": 409,
    "request_too_large": 413,
    "too_many_items": 413,
    "unsupported_media_type": 415,
    "validation_error": 422,
    "invalid_amount": 422,
    "unknown_currency": 422,
    "currency_mismatch": 422,
    "same_account": 422,
    "system_account_not_allowed": 422,
    "idempotency_key_reused": 422,
    "unbalanced": 422,
    "too_many_entries": 422,
    "capture_exceeds_hold": 422,
    "reversal_exceeds_original": 422,
    "partial_reversal_not_allowed": 422,
    "url_invalid": 422,
    "url_too_long": 422,
    "url_scheme_not_allowed": 422,
    "url_host_unresolvable": 422,
    "url_address_not_allowed": 422,
    "internal_error": 500,
    "not_ready": 503,
    "database_unavailable": 503,
}


class ApiProblem(Exception):
    """Raised anywhere in a request to answer with a problem document."""

    def __init__(self, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.extra = extra


def problem_response(code: str, detail: str, **extra: Any) -> Response:
    status = STATUS_BY_CODE[code]
    body = {
        "type": f"/problems/{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        **{k: v for k, v in extra.items() if k != "headers"},
    }
    response = Response(json.dumps(body), status=status, content_type=PROBLEM_CONTENT_TYPE)
    for name, value in extra.get("headers", {}).items():
        response.headers[name] = value
    return response
