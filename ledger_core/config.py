"""Settings read from the environment, each with its default and unit in the name."""

import os
from dataclasses import dataclass, field

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


def _int_env(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Settings:
    database_url: str = field(default_factory=database_url_from_env)
    redis_url: str = field(default_factory=redis_url_from_env)
    # Pool per process: the API serves one request per thread, a worker one task per process.
    database_pool_size: int = field(default_factory=lambda: _int_env("DATABASE_POOL_SIZE", 10))
    database_pool_overflow_max: int = field(
        default_factory=lambda: _int_env("DATABASE_POOL_OVERFLOW_MAX", 20)
    )
    database_statement_timeout_milliseconds: int = field(
        default_factory=lambda: _int_env("DATABASE_STATEMENT_TIMEOUT_MILLISECONDS", 30_000)
    )
    # A PENDING transfer older than this is assumed to have lost its task and is re-enqueued.
    sweeper_pending_age_min_seconds: int = field(
        default_factory=lambda: _int_env("SWEEPER_PENDING_AGE_MIN_SECONDS", 30)
    )
    sweeper_interval_seconds: int = field(
        default_factory=lambda: _int_env("SWEEPER_INTERVAL_SECONDS", 10)
    )
    sweeper_batch_size_max: int = field(
        default_factory=lambda: _int_env("SWEEPER_BATCH_SIZE_MAX", 500)
    )
    redis_socket_timeout_seconds: float = field(
        default_factory=lambda: float(os.environ.get("REDIS_SOCKET_TIMEOUT_SECONDS", "2"))
    )
