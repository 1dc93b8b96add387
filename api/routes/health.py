"""Liveness and readiness, without authentication, for load balancers and orchestrators."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import text

from api.operations import Call, operation
from api.problems import problem_response

bp = Blueprint("health", __name__)


@operation(bp, "GET", "/health", summary="The process is up", scope=None, responses={200: None})
def health(call: Call) -> ResponseReturnValue:
    return jsonify({"status": "ok"})


@operation(
    bp,
    "GET",
    "/ready",
    summary="PostgreSQL and Redis answer",
    scope=None,
    responses={200: None, 503: None},
)
def ready(call: Call) -> ResponseReturnValue:
    services = current_app.extensions["ledger"]
    checks: dict[str, str] = {}
    try:
        with services.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["postgresql"] = "ok"
    except Exception as error:
        checks["postgresql"] = f"error: {type(error).__name__}"
    try:
        services.redis.ping()
        checks["redis"] = "ok"
    except Exception as error:
        checks["redis"] = f"error: {type(error).__name__}"
    if all(value == "ok" for value in checks.values()):
        return jsonify({"status": "ready", "checks": checks})
    return problem_response("not_ready", "A dependency does not answer.", checks=checks)
