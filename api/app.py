"""Flask application factory."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException

from api.problems import ApiProblem, problem_response
from api.routes import accounts, docs, health, transfers, webhooks
from api.wiring import build_services
from ledger_core.config import Settings
from ledger_core.domain import limits

log = logging.getLogger(__name__)

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
    app.extensions["ledger"] = build_services(settings, app.config.get("BROKER_URL"))

    for blueprint in (health.bp, accounts.bp, transfers.bp, webhooks.bp, docs.bp):
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
            detail = f"The body is larger than {limits.request_body_size_max_bytes} bytes."
        return problem_response(code, detail)

    @app.errorhandler(Exception)
    def on_unexpected(error: Exception) -> Any:
        log.exception("unhandled error")
        return problem_response("internal_error", "Something went wrong on our side.")

    return app
