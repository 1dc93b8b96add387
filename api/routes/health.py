"""Liveness and readiness, without authentication, for load balancers and orchestrators."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from flask.typing import ResponseReturnValue
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from api import schemas
from api.operations import Call, operation
from api.problems import problem_response
from ledger_core.adapters.metrics import exposition

bp = Blueprint("health", __name__)


@operation(
    bp,
    "GET",
    "/health",
    summary="Liveness: the process serves requests (it checks nothing else)",
    scope=None,
    responses={200: schemas.Health},
)
def health(call: Call) -> ResponseReturnValue:
    return jsonify({"status": "ok"})


def _ping(client: Any) -> str:
    try:
        client.ping()
    except Exception as error:
        return f"degraded: {type(error).__name__}"
    return "ok"


@operation(
    bp,
    "GET",
    "/ready",
    summary="Readiness: 200 while PostgreSQL answers (Redis down is reported, not refused)",
    scope=None,
    responses={200: schemas.Readiness, 503: None},
)
def ready(call: Call) -> ResponseReturnValue:
    """What a load balancer probes. Only PostgreSQL decides: it holds every accepted
    transfer, while Redis only carries wake-ups and cached copies, which the sweeper
    and PostgreSQL stand in for. Taking the API out while Redis is down would refuse
    money movements that can be accepted and posted."""
    services = current_app.extensions["ledger"]
    checks: dict[str, str] = {}
    try:
        with services.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["postgresql"] = "ok"
    except Exception as error:
        checks["postgresql"] = f"error: {type(error).__name__}"
    checks["redis"] = _ping(services.redis)
    checks["idempotency_cache"] = _ping(services.cache.client)
    if checks["postgresql"] != "ok":
        return problem_response("not_ready", "PostgreSQL does not answer.", checks=checks)
    status = "ready" if all(value == "ok" for value in checks.values()) else "degraded"
    return jsonify({"status": status, "checks": checks})


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    """Prometheus text format: this API's and, with PROMETHEUS_MULTIPROC_DIR shared, the
    workers' metrics, plus system gauges read now (oldest PENDING, queue depths)."""
    registry = current_app.extensions["metrics_registry"]
    return Response(exposition(registry), content_type=CONTENT_TYPE_LATEST)
