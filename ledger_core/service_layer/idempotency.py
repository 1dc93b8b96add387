"""Idempotent requests: the same key and body give the same answer, and act once.

A unique constraint, not a read-then-write, decides who acts: the request takes a
transaction-scoped advisory lock on (API key, idempotency key) without waiting, so a
concurrent duplicate learns at once that the first is still running (409), and a
later one finds the stored response committed by the first.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from ledger_core.domain import limits
from ledger_core.service_layer.errors import Failure, Response
from ledger_core.service_layer.ports import (
    IdempotencyCache,
    StoredResponse,
    UnitOfWork,
    UnitOfWorkFactory,
)

log = logging.getLogger(__name__)

# What an action returns when it succeeds: the response and what to do after the commit.
ActionResult = tuple[Response, Callable[[], None] | None]


def request_fingerprint(method: str, path: str, body: Any) -> str:
    """Hash of the request as parsed, so that key order and whitespace do not matter."""
    canonical = json.dumps([method, path, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


KEY_REUSED = Failure(
    "idempotency_key_reused",
    "This Idempotency-Key was already used with a different request.",
)


def replay(stored: StoredResponse, request_hash: str) -> Response | Failure:
    """The stored answer if the request is the same one, else why the key cannot serve."""
    stored_hash, status_code, body = stored
    if stored_hash != request_hash:
        return KEY_REUSED
    return Response(status_code, body, replayed=True)


def run_idempotent(
    uow_factory: UnitOfWorkFactory,
    cache: IdempotencyCache,
    *,
    api_key_id: str,
    key: str | None,
    request_hash: str,
    action: Callable[[UnitOfWork], ActionResult | Failure],
) -> Response | Failure:
    """Run `action` inside one unit of work, at most once per (api_key_id, key).

    Failures are not stored: a request refused at accept time changes nothing, so
    retrying it after fixing the cause is allowed.
    """
    if key is not None:
        cached = cache.get(api_key_id, key)
        if cached is not None:
            return replay(cached, request_hash)

    with uow_factory() as uow:
        if key is not None:
            if not uow.try_advisory_lock("idempotency", api_key_id, key):
                return Failure(
                    "idempotency_key_in_use",
                    "A request with this Idempotency-Key is still being processed.",
                    {"retry_after_seconds": 1},
                )
            found = uow.idempotency.get(api_key_id, key, ttl_seconds=limits.idempotency_ttl_seconds)
            if found is not None:
                stored, expires_in_seconds = found
                # Only for what is left of the key's life: a full fresh TTL here would
                # let Redis answer for a key PostgreSQL has already let go of.
                cache.put(api_key_id, key, stored, ttl_seconds=expires_in_seconds)
                return replay(stored, request_hash)

        outcome = action(uow)
        if isinstance(outcome, Failure):
            return outcome
        response, after_commit = outcome
        if key is not None:
            uow.idempotency.put(
                api_key_id,
                key,
                request_hash=request_hash,
                status_code=response.status_code,
                response_body=response.body,
            )
        uow.commit()

    if key is not None:
        cache.put(
            api_key_id,
            key,
            (request_hash, response.status_code, response.body),
            ttl_seconds=limits.idempotency_ttl_seconds,
        )
    if after_commit is not None:
        after_commit()
    return response
