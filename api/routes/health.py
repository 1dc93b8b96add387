"""Liveness and readiness, without authentication, for load balancers and orchestrators."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from flask.typing import ResponseReturnValue
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from api.operations import Call, operation
from api.problems import problem_response
from ledger_core.adapters.metrics import exposition

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


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    """Prometheus text format: this API's and, with PROMETHEUS_MULTIPROC_DIR shared, the
    workers' metrics, plus system gauges read now (oldest PENDING, queue depths)."""
    registry = current_app.extensions["metrics_registry"]
    return Response(exposition(registry), content_type=CONTENT_TYPE_LATEST)
