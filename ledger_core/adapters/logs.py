"""Structured JSON logs for every process, with secrets taken out.

Context (request id, transfer id, task id) is bound with structlog's contextvars and
appears on every line logged while it is bound, from our code or a library's.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

import structlog

# Keys whose values never reach a log line, and secret-looking tokens inside any string.
REDACTED_KEYS = frozenset(
    {"authorization", "api_key", "secret", "previous_secret", "password", "token", "key_secret"}
)
SECRET_PATTERN = re.compile(r"\b(lk_|whsec_)[A-Za-z0-9_\-+/=]{8,}")
REDACTION = "[redacted]"


def redact(value: Any) -> Any:
    if isinstance(value, str):
        return SECRET_PATTERN.sub(lambda m: m.group(1) + REDACTION, value)
    if isinstance(value, dict):
        return {
            k: REDACTION if str(k).lower() in REDACTED_KEYS else redact(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def redact_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    return redact(dict(event))


def configure_logging(process: str, level: str | None = None) -> None:
    """Route structlog and the standard library (Celery, gunicorn, SQLAlchemy) through one
    JSON renderer on stderr."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            lambda _l, _m, event: {**event, "process": process},
            redact_secrets,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("LOG_LEVEL", "INFO"))


class AccessLog:
    """One JSON line per HTTP request, written straight to stderr.

    The same shape as every other line (event, level, logger, timestamp, process and the
    bound context), without the processor chain: at thousands of requests per second the
    chain cost more than the request. Its fields hold no secrets (method, route, status,
    duration and ids), and redaction still runs over the bound context. One os.write per
    line: lines from concurrent threads never interleave.
    """

    def __init__(self, process: str, logger: str = "api.access") -> None:
        self._process = process
        self._logger = logger
        self.enabled = logging.getLogger(logger).isEnabledFor(logging.INFO)

    def __call__(self, **fields: Any) -> None:
        if not self.enabled:
            return
        line = {
            **fields,
            "event": "request",
            **redact(structlog.contextvars.get_contextvars()),
            "level": "info",
            "logger": self._logger,
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "process": self._process,
        }
        os.write(sys.stderr.fileno(), json.dumps(line, default=str).encode() + b"\n")
