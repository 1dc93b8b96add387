"""Declare an API operation once: the declaration authenticates, validates and documents.

`operation(...)` registers a Flask view, checks the bearer key and its scope, reads and
validates the JSON body against a pydantic model, checks the Idempotency-Key header,
and records everything /openapi.json needs, so the docs cannot drift from the checks.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import Blueprint, current_app, request
from pydantic import BaseModel, ValidationError

from api.problems import ApiProblem
from ledger_core.domain import limits
from ledger_core.domain.access import ApiKey, Scope, scope_allows
from ledger_core.service_layer.idempotency import request_fingerprint
from ledger_core.service_layer.movements import Keyed

IDEMPOTENCY_KEY_PATTERN = re.compile(rf"^[\x20-\x7e]{{1,{limits.idempotency_key_length_max}}}$")
# Nesting levels of a request body (the top-level object is 1). The deepest valid body,
# a batch item's metadata, is 4; the limit keeps the recursive parser, validator and
# fingerprint far from Python's recursion limit (a RecursionError was a 500).
request_json_depth_max = 32
# What an id in a path may look like (ours are `prefix_` and hex). Anything else cannot
# name a resource: it is answered 404 before it reaches PostgreSQL, which cannot even
# compare text holding U+0000.
path_id_length_max = 64
PATH_ID_PATTERN = re.compile(rf"[A-Za-z0-9_-]{{1,{path_id_length_max}}}")
NOT_FOUND_BY_PATH_PARAM = {
    "account_id": "account_not_found",
    "transfer_id": "transfer_not_found",
    "batch_id": "batch_not_found",
    "endpoint_id": "webhook_endpoint_not_found",
    "delivery_id": "webhook_delivery_not_found",
    "event_id": "event_not_found",
    "transaction_id": "transaction_not_found",
    "payment_id": "payment_not_found",
    "hold_id": "hold_not_found",
}
# ASCII digits only: str.isdigit() also accepts "²" (which int() refuses) and other
# scripts' digits; four digits are enough for any page size and cannot overflow.
page_limit_digits_max = 4
PAGE_LIMIT_PATTERN = re.compile(rf"[0-9]{{1,{page_limit_digits_max}}}")


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    scope: Scope | None
    body: type[BaseModel] | None
    responses: Mapping[int, type[BaseModel] | None]
    idempotency: str  # "required", "optional" or "none"
    query: dict[str, str] = field(default_factory=dict)
    tag: str = "ledger"
    body_size_max_bytes: int = limits.request_body_size_max_bytes


REGISTRY: list[Operation] = []


@dataclass(frozen=True)
class Call:
    """What a view receives once the request passed the shell's checks."""

    api_key: ApiKey | None
    body: Any
    idempotency_key: str | None
    request_hash: str


def _authenticate(required: Scope) -> ApiKey:
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ApiProblem(
            "unauthorized",
            "Send an API key as `Authorization: Bearer <key>`.",
            headers={"WWW-Authenticate": 'Bearer realm="ledger"'},
        )
    found = current_app.extensions["ledger"].api_keys.authenticate(secret.strip())
    if found is None:
        raise ApiProblem(
            "unauthorized",
            "The API key is unknown, revoked or expired.",
            headers={"WWW-Authenticate": 'Bearer realm="ledger", error="invalid_token"'},
        )
    if not scope_allows(found.scope, required):
        raise ApiProblem("forbidden", f"This operation needs the `{required}` scope.")
    return found


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _read_json(body_size_max_bytes: int) -> Any:
    content_type = request.mimetype
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiProblem("unsupported_media_type", "Send the body as application/json.")
    request.max_content_length = body_size_max_bytes
    raw = request.get_data(cache=True)  # over the limit: 413 from Werkzeug
    try:
        parsed = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError as error:
        raise _too_deep() from error
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiProblem("malformed_json", f"The body is not valid JSON: {error}") from error
    if _depth_exceeds(parsed, request_json_depth_max):
        raise _too_deep()
    return parsed


def _too_deep() -> ApiProblem:
    return ApiProblem(
        "json_too_deep", f"The body is nested deeper than {request_json_depth_max} levels."
    )


def _depth_exceeds(value: Any, depth_max: int) -> bool:
    """Without recursion: the body may be nested up to what the parser accepted."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > depth_max:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _validation_problem(error: ValidationError) -> ApiProblem:
    errors = [
        {
            "field": ".".join(str(part) for part in item["loc"]),
            "message": item["msg"],
            "type": item["type"],
        }
        for item in error.errors(include_url=False, include_input=False)
    ]
    # An amount out of its range; not a field named amount where none is allowed.
    amounts = [
        e
        for e in errors
        if e["field"].rsplit(".", 1)[-1] == "amount" and e["type"] != "extra_forbidden"
    ]
    code = "invalid_amount" if amounts else "validation_error"
    detail = "; ".join(f"{e['field'] or 'body'}: {e['message']}" for e in errors)
    extra: dict[str, Any] = {"errors": errors}
    # In a batch, the index of the first item at fault (the whole request is refused).
    items = [item["loc"] for item in error.errors() if item["loc"][:1] == ("items",)]
    if items and len(items[0]) > 1 and isinstance(items[0][1], int):
        extra["item_index"] = items[0][1]
    return ApiProblem(code, detail, **extra)


def _idempotency_key(mode: str) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        if mode == "required":
            raise ApiProblem(
                "idempotency_key_missing",
                "Send an Idempotency-Key header so that a retry cannot move money twice.",
            )
        return None
    if not IDEMPOTENCY_KEY_PATTERN.match(key):
        raise ApiProblem(
            "idempotency_key_invalid",
            f"Idempotency-Key must be 1 to {limits.idempotency_key_length_max}"
            " printable ASCII characters.",
        )
    return key


def operation(
    blueprint: Blueprint,
    method: str,
    path: str,
    *,
    summary: str,
    scope: Scope | None,
    responses: Mapping[int, type[BaseModel] | None],
    body: type[BaseModel] | None = None,
    idempotency: str = "none",
    query: dict[str, str] | None = None,
    body_size_max_bytes: int = limits.request_body_size_max_bytes,
    before_validation: Callable[[Any], None] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a view; see the module docstring. `path` uses OpenAPI `{name}` syntax."""
    flask_rule = re.sub(r"{(\w+)}", r"<\1>", path)
    REGISTRY.append(
        Operation(
            method,
            path,
            summary,
            scope,
            body,
            responses,
            idempotency,
            query or {},
            tag=blueprint.name,
            body_size_max_bytes=body_size_max_bytes,
        )
    )

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(**path_params: str) -> Any:
            api_key = _authenticate(scope) if scope is not None else None
            _check_path_ids(path_params)
            _refuse_unknown_query(query or {})
            parsed: Any = None
            request_hash = ""
            key: str | None = None
            if body is not None:
                raw = _read_json(body_size_max_bytes)
                key = _idempotency_key(idempotency)
                if before_validation is not None:
                    before_validation(raw)
                try:
                    parsed = body.model_validate(raw)
                except ValidationError as error:
                    raise _validation_problem(error) from error
                request_hash = request_fingerprint(method, request.path, raw)
            call = Call(api_key, parsed, key, request_hash)
            return view(call, **path_params)

        blueprint.add_url_rule(flask_rule, view.__name__, wrapper, methods=[method])
        return wrapper

    return decorate


def _refuse_unknown_query(declared: dict[str, str]) -> None:
    # As with unknown body fields: a misspelt `?limt=10` must not be silently ignored.
    unknown = sorted(name for name in request.args if name not in declared)
    if unknown:
        allowed = ", ".join(sorted(declared)) or "none"
        raise ApiProblem(
            "invalid_query",
            f"Unknown query parameter {unknown[0][:path_id_length_max]!r};"
            f" this operation takes: {allowed}.",
        )


def _check_path_ids(path_params: dict[str, str]) -> None:
    for name, value in path_params.items():
        if not PATH_ID_PATTERN.fullmatch(value):
            code = NOT_FOUND_BY_PATH_PARAM.get(name, "not_found")
            raise ApiProblem(code, f"No such {name.removesuffix('_id')}.")


def page_limit() -> int:
    raw = request.args.get("limit", str(limits.page_size_default))
    if not PAGE_LIMIT_PATTERN.fullmatch(raw) or not 1 <= int(raw) <= limits.page_size_max:
        raise ApiProblem(
            "invalid_query", f"limit must be an integer from 1 to {limits.page_size_max}."
        )
    return int(raw)


# RFC 3339 with its offset: a time without one would be read in some server's zone.
QUERY_TIME_PATTERN = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def query_time(name: str) -> datetime | None:
    """The query parameter `name` as an aware datetime, None if absent; 400 if malformed."""
    raw = request.args.get(name)
    if raw is None:
        return None
    parsed = None
    if QUERY_TIME_PATTERN.fullmatch(raw):
        try:
            parsed = datetime.fromisoformat(raw.replace("z", "Z"))
        except ValueError:
            parsed = None
    if parsed is None:
        raise ApiProblem(
            "invalid_query",
            f"{name} must be an RFC 3339 time with its offset, as 2026-01-31T23:59:59Z.",
        )
    return parsed


def keyed(call: Call) -> Keyed:
    """The request's key and fingerprint, for a route whose Idempotency-Key is required."""
    assert call.api_key is not None and call.idempotency_key is not None
    return Keyed(call.api_key, call.idempotency_key, call.request_hash)
