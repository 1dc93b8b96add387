"""What the use cases need from the outside world, as protocols the adapters implement."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

StoredResponse = tuple[str, int, dict[str, Any]]  # request hash, status code, body


class IdempotencyCache(Protocol):
    """A fast copy of stored idempotent responses. PostgreSQL stays the source of truth,
    so every method may fail or forget without changing an answer."""

    def get(self, api_key_id: str, key: str) -> StoredResponse | None: ...

    def put(
        self, api_key_id: str, key: str, stored: StoredResponse, *, ttl_seconds: float
    ) -> None: ...


# Publishes one posting task. Called only after the transfer's transaction committed.
EnqueuePosting = Callable[[str], None]

# Opens a unit of work: `with uow_factory() as uow: ...; uow.commit()`.
UnitOfWorkFactory = Callable[[], AbstractContextManager[Any]]


class UrlGuard(Protocol):
    """Says why a webhook URL may not be called (scheme, non-public address), or None."""

    def check(self, url: str) -> str | None: ...


class WebhookSender(Protocol):
    def send(
        self, url: str, *, message_id: str, payload: str, secrets: list[str], timestamp: Any
    ) -> Any:  # AttemptResult
        ...


# Publishes delivery tasks. Called only after the deliveries' transaction committed.
EnqueueDeliveries = Callable[[list[str]], None]


class Metrics(Protocol):
    """What the use cases report; the Prometheus adapter implements it."""

    def transfer_finalized(self, status: str, latency_seconds: float | None) -> None: ...

    def posting_batch(self, size: int) -> None: ...

    def webhook_attempt(self, outcome: str) -> None: ...


class NullMetrics:
    def transfer_finalized(self, status: str, latency_seconds: float | None) -> None:
        pass

    def posting_batch(self, size: int) -> None:
        pass

    def webhook_attempt(self, outcome: str) -> None:
        pass


NULL_METRICS = NullMetrics()


class NullIdempotencyCache:
    """No cache: every request goes to PostgreSQL (tools, tests, Redis-less setups)."""

    def get(self, api_key_id: str, key: str) -> StoredResponse | None:
        return None

    def put(self, api_key_id: str, key: str, stored: StoredResponse, *, ttl_seconds: float) -> None:
        pass
