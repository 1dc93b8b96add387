"""Waking the posting workers through the broker, at most one wake-up queued per shard.

A Redis flag per shard says "a wake-up is waiting". Whoever sets it (SET NX) publishes one
task; the task clears it once it holds its shard, before its first claim. So a transfer
committed after that claim began either finds the flag clear and publishes, or finds it
set by a wake-up still waiting, whose claim will see the transfer. The flag expires after
`flag_ttl_ms`, so a publish that failed after setting it delays nothing for long; the
sweeper covers the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis

log = logging.getLogger(__name__)

FLAG_PREFIX = "ledger:posting:wake:"
wake_flag_ttl_milliseconds = 2_000


class PostingWakeups:
    def __init__(
        self,
        client: redis.Redis,
        publish: Callable[[int], None],
        *,
        flag_ttl_milliseconds: int = wake_flag_ttl_milliseconds,
    ) -> None:
        self._redis = client
        self._publish = publish
        self._ttl = flag_ttl_milliseconds

    def wake(self, shard: int) -> None:
        """Publish a wake-up unless one is already on its way (blocks on Redis)."""
        try:
            first = bool(self._redis.set(f"{FLAG_PREFIX}{shard}", 1, nx=True, px=self._ttl))
        except redis.RedisError:
            first = True  # no flag to coalesce on: publish anyway
        if not first:
            return
        try:
            self._publish(shard)
        except Exception:
            self.clear(shard)
            raise

    def force(self, shard: int) -> None:
        """Publish a wake-up whatever the flag says (the sweeper; a task handing over)."""
        self._publish(shard)

    def clear(self, shard: int) -> None:
        try:
            self._redis.delete(f"{FLAG_PREFIX}{shard}")
        except redis.RedisError:
            log.warning("clearing the wake-up flag failed; it expires by itself", exc_info=True)
