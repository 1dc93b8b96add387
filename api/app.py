"""Flask application factory."""

from __future__ import annotations

import random
import re
import time
from typing import Any

import structlog
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from api.problems import ApiProblem, problem_response
from api.routes import accounts, docs, health, holds, payments, transactions, transfers, webhooks
from api.wiring import build_services
from ledger_core.adapters.logs import AccessLog, configure_logging
from ledger_core.adapters.metrics import (
    SystemCollector,
    http_request_duration_seconds,
    http_requests_total,
    registry_for_scrape,
)
from ledger_core.config import Settings
from ledger_core.domain import limits
from ledger_core.service_layer.errors import StorageUnavailableError

log = structlog.get_logger(__name__)
_ids = random.Random()  # noqa: S311 (request ids correlate logs; they guard nothing)
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

database_retry_after_seconds = 1
# Metric label values must be bounded: a client may send any method token (`FOO /`),
# and each new value would be a new time series in every process, kept forever.
METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
HTTP_EXCEPTION_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app. `test_config` may set SETTINGS (a Settings) and BROKER_URL."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = limits.request_body_size_max_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]  (keep the documented field order)
    if test_config:
        app.config.update(test_config)
    settings = app.config.get("SETTINGS") or Settings()
    services = build_services(settings, app.config.get("BROKER_URL"))
    app.extensions["ledger"] = services
    configure_logging("api")
    access_log = AccessLog("api")
    app.extensions["metrics_registry"] = registry_for_scrape(
        SystemCollector(services.engine, services.redis, services.broker_redis)
    )

    @app.before_request
    def open_request_context() -> None:
        given = request.headers.get("X-Request-Id", "")
        # Echo a caller's id if it is sane; never let it inject into logs or headers.
        # Not uuid4: a request id needs no secrecy, and os.urandom costs a system call.
        g.request_id = given if REQUEST_ID_PATTERN.match(given) else f"{_ids.getrandbits(128):032x}"
        g.request_started = time.perf_counter()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=g.request_id)

    @app.after_request
    def close_request_context(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        elapsed = time.perf_counter() - g.get("request_started", time.perf_counter())
        method = request.method if request.method in METRIC_METHODS else "other"
        http_requests_total.labels(method, route, str(response.status_code)).inc()
        http_request_duration_seconds.labels(method, route).observe(elapsed)
        response.headers["X-Request-Id"] = g.get("request_id", "")
        access_log(
            method=request.method,
            route=route,
            status=response.status_code,
            duration_ms=round(elapsed * 1000, 2),
        )
        return response

    blueprints = (health.bp, accounts.bp, transfers.bp, transactions.bp, payments.bp, holds.bp)
    for blueprint in (*blueprints, webhooks.bp, docs.bp):
        app.register_blueprint(blueprint)

    @app.errorhandler(ApiProblem)
    def on_problem(error: ApiProblem) -> Any:
        return problem_response(error.code, error.detail, **error.extra)

    @app.errorhandler(HTTPException)
    def on_http_exception(error: HTTPException) -> Any:
        status = error.code or 500
        code = HTTP_EXCEPTION_CODES.get(status)
        if code is None:
            return error
        detail = error.description or ""
        if status == 413:
            size_max = request.max_content_length or limits.request_body_size_max_bytes
            detail = f"The body is larger than {size_max} bytes."
        return problem_response(code, detail)

    @app.errorhandler(StorageUnavailableError)
    def on_storage_unavailable(error: StorageUnavailableError) -> Any:
        # Nothing was committed, or the commit was cut off: a retry with the same
        # Idempotency-Key is safe either way.
        log.warning("database unavailable", error=str(error)[:200])
        return problem_response(
            "database_unavailable",
            "The database does not answer; retry with the same Idempotency-Key.",
            headers={"Retry-After": str(database_retry_after_seconds)},
        )

    @app.errorhandler(Exception)
    def on_unexpected(error: Exception) -> Any:
        log.exception("unhandled error")
        return problem_response("internal_error", "Something went wrong on our side.")

    return app
