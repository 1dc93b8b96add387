"""Settings read from the environment, each with its default and unit in the name."""

import os
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ledger_core.domain import limits
from ledger_core.domain.webhooks import DEFAULT_RETRY_SCHEDULE_SECONDS

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:55432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:56379/0"


def normalize_database_url(url: str) -> str:
    """Accept the usual `postgres://` spellings and pin the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def database_url_from_env() -> str:
    return normalize_database_url(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))


def redis_url_from_env() -> str:
    return os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)


def next_database_url(redis_url: str) -> str:
    """The same Redis server, logical database number + 1 (`/0` -> `/1`; `?db=` for
    unix sockets): the default home of the idempotency cache, apart from the broker."""
    parts = urlsplit(redis_url)
    query = dict(parse_qsl(parts.query))
    if parts.scheme == "unix" or "db" in query:
        query["db"] = str(int(query.get("db", "0")) + 1)
        # Not urlunsplit: it drops the "//" of `unix:///path` when there is no host.
        return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query)}"
    number = int(parts.path.strip("/") or "0")
    return urlunsplit(parts._replace(path=f"/{number + 1}"))


def _int_env(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _float_env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _schedule_env(name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    raw = os.environ.get(name)
    if not raw:
        return tuple(float(s) for s in default)
    return tuple(float(part) for part in raw.split(","))


@dataclass(frozen=True)
class Settings:
    database_url: str = field(default_factory=database_url_from_env)
    redis_url: str = field(default_factory=redis_url_from_env)
    # Copies of idempotent answers, safe to evict: never in the broker's database, so a
    # full cache cannot refuse tasks (the broker runs `noeviction`, the cache should
    # run `allkeys-lru` with its own `maxmemory`, docs/operations.md). Empty: REDIS_URL's
    # server, database number + 1.
    idempotency_cache_url: str = field(
        default_factory=lambda: os.environ.get("IDEMPOTENCY_CACHE_URL", "")
    )
    # Pool per process: the API serves one request per thread, a worker one task per process.
    database_pool_size: int = field(default_factory=lambda: _int_env("DATABASE_POOL_SIZE", 10))
    database_pool_overflow_max: int = field(
        default_factory=lambda: _int_env("DATABASE_POOL_OVERFLOW_MAX", 20)
    )
    database_statement_timeout_milliseconds: int = field(
        default_factory=lambda: _int_env("DATABASE_STATEMENT_TIMEOUT_MILLISECONDS", 30_000)
    )
    # A PENDING transfer older than this is assumed to have lost its wake-up: the sweeper
    # wakes its shard's posting workers.
    sweeper_pending_age_min_seconds: int = field(
        default_factory=lambda: _int_env("SWEEPER_PENDING_AGE_MIN_SECONDS", 30)
    )
    # Posting queues, routed by the debited account; 1 is one queue named "transfers".
    posting_shards: int = field(default_factory=lambda: _int_env("POSTING_SHARDS", 1))
    posting_batch_size_max: int = field(
        default_factory=lambda: _int_env("POSTING_BATCH_SIZE_MAX", limits.posting_batch_size_max)
    )
    # A transfer whose posting fails (not for money) is retried after these delays, then
    # quarantined after this many failed attempts.
    posting_attempts_max: int = field(
        default_factory=lambda: _int_env("POSTING_ATTEMPTS_MAX", limits.posting_attempts_max)
    )
    posting_retry_delays_seconds: tuple[float, ...] = field(
        default_factory=lambda: _schedule_env(
            "POSTING_RETRY_DELAYS_SECONDS", limits.posting_retry_delays_seconds
        )
    )
    # Under `make run`: webhooks may target http:// and loopback, for a local receiver.
    development: bool = field(default_factory=lambda: os.environ.get("LEDGER_DEVELOPMENT") == "1")
    webhook_connect_timeout_seconds: float = field(
        default_factory=lambda: _float_env("WEBHOOK_CONNECT_TIMEOUT_SECONDS", 3.0)
    )
    # The DNS lookup of a webhook's host (the system resolver has no timeout of its own).
    webhook_dns_timeout_seconds: float = field(
        default_factory=lambda: _float_env("WEBHOOK_DNS_TIMEOUT_SECONDS", 2.0)
    )
    # The whole attempt, one deadline: DNS, connect, TLS, send, wait for and read the
    # (capped) response. Shorter than the lease (this plus the margin below).
    webhook_timeout_seconds: float = field(
        default_factory=lambda: _float_env("WEBHOOK_TIMEOUT_SECONDS", 10.0)
    )
    # Attempts in flight to one endpoint at once, across every webhooks process: a slow
    # endpoint holds at most this many processes, whatever its backlog.
    webhook_endpoint_concurrency_max: int = field(
        default_factory=lambda: _int_env("WEBHOOK_ENDPOINT_CONCURRENCY_MAX", 2)
    )
    # A delivery whose endpoint is at that cap is due again after this (no attempt counted).
    webhook_endpoint_busy_retry_after_seconds: float = field(
        default_factory=lambda: _float_env("WEBHOOK_ENDPOINT_BUSY_RETRY_AFTER_SECONDS", 5.0)
    )
    # Deliveries one replay (or re-enabling an endpoint) creates at most.
    webhook_replay_events_max: int = field(
        default_factory=lambda: _int_env("WEBHOOK_REPLAY_EVENTS_MAX", 10_000)
    )
    webhook_response_body_size_max_bytes: int = field(
        default_factory=lambda: _int_env("WEBHOOK_RESPONSE_BODY_SIZE_MAX_BYTES", 4096)
    )
    # A claimed delivery belongs to its worker for the timeout plus this margin.
    webhook_lease_margin_seconds: float = field(
        default_factory=lambda: _float_env("WEBHOOK_LEASE_MARGIN_SECONDS", 30.0)
    )
    webhook_retry_schedule_seconds: tuple[float, ...] = field(
        default_factory=lambda: _schedule_env(
            "WEBHOOK_RETRY_SCHEDULE_SECONDS", DEFAULT_RETRY_SCHEDULE_SECONDS
        )
    )
    # A queued delivery task not run by then is enqueued again (the first may be lost).
    webhook_requeue_after_seconds: float = field(
        default_factory=lambda: _float_env("WEBHOOK_REQUEUE_AFTER_SECONDS", 120.0)
    )
    webhook_scheduler_batch_size_max: int = field(
        default_factory=lambda: _int_env("WEBHOOK_SCHEDULER_BATCH_SIZE_MAX", 500)
    )
    reconcile_pending_age_max_seconds: float = field(
        default_factory=lambda: _float_env("RECONCILE_PENDING_AGE_MAX_SECONDS", 300.0)
    )
    reconcile_delivery_overdue_max_seconds: float = field(
        default_factory=lambda: _float_env("RECONCILE_DELIVERY_OVERDUE_MAX_SECONDS", 600.0)
    )
    redis_socket_timeout_seconds: float = field(
        default_factory=lambda: float(os.environ.get("REDIS_SOCKET_TIMEOUT_SECONDS", "2"))
    )

    def __post_init__(self) -> None:
        # Derived here, not in a default factory, so that a redis_url given explicitly
        # (tests, the bench) moves the cache with it.
        if not self.idempotency_cache_url:
            object.__setattr__(self, "idempotency_cache_url", next_database_url(self.redis_url))


def posting_queue(shard: int, shards: int) -> str:
    """The queue of a posting shard: "transfers" alone, or "transfers.N" of several."""
    return "transfers" if shards == 1 else f"transfers.{shard}"
