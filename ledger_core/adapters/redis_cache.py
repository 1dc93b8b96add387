"""Redis copy of stored idempotent responses, kept 24 hours.

PostgreSQL is the source of truth: when Redis is slow or down, reads miss and writes are
dropped, and the request falls through to the database with the same answer.
"""

from __future__ import annotations

import json
import logging

import redis

from ledger_core.service_layer.ports import StoredResponse

log = logging.getLogger(__name__)

KEY_PREFIX = "ledger:idempotency:"


class RedisIdempotencyCache:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    @staticmethod
    def _key(api_key_id: str, key: str) -> str:
        return f"{KEY_PREFIX}{api_key_id}:{key}"

    def get(self, api_key_id: str, key: str) -> StoredResponse | None:
        try:
            raw = self._redis.get(self._key(api_key_id, key))
        except redis.RedisError:
            log.warning("idempotency cache read failed; using PostgreSQL", exc_info=True)
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
        try:
            self._redis.set(self._key(api_key_id, key), json.dumps(stored), ex=int(ttl_seconds))
        except redis.RedisError:
            log.warning("idempotency cache write failed; PostgreSQL has it", exc_info=True)


def make_redis(url: str, *, socket_timeout_seconds: float) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout_seconds,
        socket_connect_timeout=socket_timeout_seconds,
        health_check_interval=30,
    )
