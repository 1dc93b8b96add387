"""OpenAPI document built from the operation registry, and Swagger UI served locally."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, send_from_directory
from flask.typing import ResponseReturnValue
from pydantic import BaseModel
from swagger_ui_bundle import swagger_ui_path

from api import schemas
from api.operations import REGISTRY, Operation
from api.problems import STATUS_BY_CODE

bp = Blueprint("docs", __name__)

SWAGGER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Ledger API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>"""


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation_doc(op: Operation, schemas_out: dict[str, Any]) -> dict[str, Any]:
    def remember(model: type[BaseModel]) -> None:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas_out.update(schema.pop("$defs", {}))
        schemas_out[model.__name__] = schema

    doc: dict[str, Any] = {"summary": op.summary, "tags": [op.tag], "responses": {}}
    if op.scope is not None:
        doc["security"] = [{"bearer": []}]
        doc["description"] = f"Needs the `{op.scope}` scope (or a wider one)."
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_params(op.path)
    ]
    parameters += [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": text,
            "schema": {"type": "string"},
        }
        for name, text in op.query.items()
    ]
    if op.idempotency != "none":
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": op.idempotency == "required",
                "description": "1-255 printable ASCII characters; replays within 24 hours.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
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
    for status, model in op.responses.items():
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
