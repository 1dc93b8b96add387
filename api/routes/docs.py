"""OpenAPI document built from the operation registry, and Swagger UI served locally."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, send_from_directory
from flask.typing import ResponseReturnValue
from pydantic import BaseModel
from swagger_ui_bundle import swagger_ui_path

from api import schemas
from api.operations import PATH_ID_PATTERN, REGISTRY, Operation
from api.problems import STATUS_BY_CODE
from ledger_core.domain import limits
from ledger_core.service_layer.pagination import CURSOR_PATTERN, cursor_length_max

bp = Blueprint("docs", __name__)

SWAGGER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Ledger API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>"""


# The query parameters of every list, as the shell checks them.
QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "limit": {
        "type": "integer",
        "minimum": 1,
        "maximum": limits.page_size_max,
        "default": limits.page_size_default,
    },
    "cursor": {
        "type": "string",
        "minLength": 1,
        "maxLength": cursor_length_max,
        "pattern": f"^{CURSOR_PATTERN.pattern}$",
    },
}
PATH_ID_SCHEMA = {"type": "string", "pattern": f"^{PATH_ID_PATTERN.pattern}$"}
IDEMPOTENCY_KEY_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": limits.idempotency_key_length_max,
    "pattern": "^[\\x20-\\x7e]+$",
}
# Problems any operation may answer because of how it is declared, whatever its view
# does: the shell's own checks (body, headers, query, path ids) and the database.
PROBLEMS_OF_A_BODY = (400, 413, 415, 422)  # malformed or too deep, too large, not JSON, invalid
DEBITS_OWNED_ONLY = (
    " A `write` key may debit only the accounts of its owner (those it or another key of"
    " its owner opened): any other is 403 `account_not_owned`, naming it in `account_id`."
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _names_accounts(schema: Any, components: dict[str, Any], seen: set[str]) -> bool:
    """Whether a request schema (its $refs followed) has a field naming accounts
    (`account_id`, `source_account_id`, `account_ids`, ...): an unknown one is a 404."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            if name in seen:
                return False
            return _names_accounts(components.get(name), components, seen | {name})
        properties = schema.get("properties", {})
        if any(name.endswith(("account_id", "account_ids")) for name in properties):
            return True
        return any(_names_accounts(value, components, seen) for value in schema.values())
    if isinstance(schema, list):
        return any(_names_accounts(item, components, seen) for item in schema)
    return False


def _implied_statuses(op: Operation, components: dict[str, Any]) -> set[int]:
    statuses = {400}  # invalid_query: a query parameter the operation does not take
    if op.body is not None:
        statuses.update(PROBLEMS_OF_A_BODY)
        if _names_accounts(_ref(op.body), components, set()):
            statuses.add(404)
    # 400 also covers idempotency_key_missing, idempotency_key_invalid, invalid_cursor.
    if op.idempotency == "optional":
        statuses.add(409)  # idempotency_key_in_use: a concurrent duplicate
    if _path_params(op.path):
        statuses.add(404)
    if op.scope is not None:
        statuses.add(503)  # database_unavailable: every key check reads PostgreSQL
    return statuses


def _operation_doc(op: Operation, schemas_out: dict[str, Any]) -> dict[str, Any]:
    def remember(model: type[BaseModel]) -> None:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas_out.update(schema.pop("$defs", {}))
        schemas_out[model.__name__] = schema

    doc: dict[str, Any] = {"summary": op.summary, "tags": [op.tag], "responses": {}}
    if op.scope is not None:
        doc["security"] = [{"bearer": []}]
        doc["description"] = f"Needs the `{op.scope}` scope (or a wider one)."
        if 403 in op.responses:  # declared by a route that debits accounts
            doc["description"] += DEBITS_OWNED_ONLY
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": PATH_ID_SCHEMA}
        for name in _path_params(op.path)
    ]
    parameters += [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": text,
            "schema": QUERY_SCHEMAS.get(name, {"type": "string"}),
        }
        for name, text in op.query.items()
    ]
    if op.idempotency != "none":
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": op.idempotency == "required",
                "description": (
                    f"1-{limits.idempotency_key_length_max} printable ASCII characters."
                    " Money movements and batches keep it for good, accounts for"
                    f" {limits.idempotency_ttl_seconds // 3600} hours."
                ),
                "schema": IDEMPOTENCY_KEY_SCHEMA,
            }
        )
    if parameters:
        doc["parameters"] = parameters
    if op.body is not None:
        remember(op.body)
        doc["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(op.body)}},
        }
    implied = {status: None for status in _implied_statuses(op, schemas_out)}
    for status, model in sorted({**implied, **op.responses}.items()):
        if model is None:
            content_type = "application/problem+json" if status >= 400 else "application/json"
            schema = _ref(schemas.Problem) if status >= 400 else {"type": "object"}
            doc["responses"][str(status)] = {
                "description": "Problem details" if status >= 400 else "OK",
                "content": {content_type: {"schema": schema}},
            }
        else:
            remember(model)
            doc["responses"][str(status)] = {
                "description": model.__name__,
                "content": {"application/json": {"schema": _ref(model)}},
            }
    if op.scope is not None:
        for status in (401, 403):
            doc["responses"][str(status)] = {"$ref": "#/components/responses/Problem"}
    return doc


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def build_openapi() -> dict[str, Any]:
    component_schemas: dict[str, Any] = {}
    component_schemas["Problem"] = schemas.Problem.model_json_schema()
    paths: dict[str, Any] = {}
    for op in REGISTRY:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation_doc(op, component_schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Ledger API",
            "version": "1",
            "description": (
                "Asynchronous double-entry ledger. Amounts are integers in minor units. "
                "Error codes: " + ", ".join(sorted(STATUS_BY_CODE)) + "."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": component_schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Problem": {
                    "description": "Problem details",
                    "content": {"application/problem+json": {"schema": _ref(schemas.Problem)}},
                }
            },
        },
    }


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    return jsonify(build_openapi())


@bp.get("/docs")
def swagger_ui() -> ResponseReturnValue:
    return Response(SWAGGER_PAGE, content_type="text/html; charset=utf-8")


@bp.get("/docs/static/<path:filename>")
def swagger_static(filename: str) -> ResponseReturnValue:
    return send_from_directory(str(swagger_ui_path), filename)
