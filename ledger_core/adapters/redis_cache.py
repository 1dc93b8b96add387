"""Redis copy of stored idempotent responses, kept 24 hours.

PostgreSQL is the source of truth: when Redis is slow or down, reads miss and writes are
dropped, and the request falls through to the database with the same answer. After a
failure Redis is left alone for `redis_retry_after_seconds`, so that an unreachable Redis
costs one timeout per process, not one per request.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import cast

import redis

from ledger_core.service_layer.ports import StoredResponse

log = logging.getLogger(__name__)

KEY_PREFIX = "ledger:idempotency:"
redis_retry_after_seconds = 5.0
# Bigger answers (a batch of a thousand transfers) are served by PostgreSQL alone: they
# would crowd the cache out for little gain.
cached_response_size_max_bytes = 64 * 1024

Submit = Callable[[Callable[[], None]], None]


def _run_now(job: Callable[[], None]) -> None:
    job()


class RedisIdempotencyCache:
    """`on_error("cache_write")` counts every copy not written: Redis refused it (down,
    or full under `noeviction`) or was being left alone after a failure."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        submit: Submit = _run_now,
        monotonic: Callable[[], float] = time.monotonic,
        on_error: Callable[[str], None] = lambda kind: None,
    ) -> None:
        self._redis = client
        self._submit = submit
        self._monotonic = monotonic
        self._on_error = on_error
        self._quiet_until = 0.0

    @property
    def client(self) -> redis.Redis:
        return self._redis

    @staticmethod
    def _key(api_key_id: str, key: str) -> str:
        return f"{KEY_PREFIX}{api_key_id}:{key}"

    def _available(self) -> bool:
        return self._monotonic() >= self._quiet_until

    def _failed(self, what: str) -> None:
        self._quiet_until = self._monotonic() + redis_retry_after_seconds
        log.warning("idempotency cache %s failed; using PostgreSQL", what, exc_info=True)

    def get(self, api_key_id: str, key: str) -> StoredResponse | None:
        if not self._available():
            return None
        try:
            raw = cast(bytes | None, self._redis.get(self._key(api_key_id, key)))
        except redis.RedisError:
            self._failed("read")
            return None
        if raw is None:
            return None
        try:
            request_hash, status_code, body = json.loads(raw)
        except (ValueError, TypeError):
            log.warning("idempotency cache entry unreadable; using PostgreSQL")
            return None
        return request_hash, status_code, body

    def put(self, api_key_id: str, key: str, stored: StoredResponse, *, ttl_seconds: float) -> None:
        """Keep the copy no longer than PostgreSQL keeps the key (`ttl_seconds` left)."""
        if ttl_seconds < 1:
            return
        if not self._available():
            self._on_error("cache_write")
            return
        value = json.dumps(stored)
        if len(value) > cached_response_size_max_bytes:
            return

        def write() -> None:
            try:
                self._redis.set(self._key(api_key_id, key), value, ex=int(ttl_seconds))
            except redis.RedisError:
                self._on_error("cache_write")
                self._failed("write")

        self._submit(write)


def make_redis(url: str, *, socket_timeout_seconds: float) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout_seconds,
        socket_connect_timeout=socket_timeout_seconds,
        health_check_interval=30,
    )
