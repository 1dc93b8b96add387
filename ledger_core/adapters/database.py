"""Engine construction: one pool per process, explicit sizes and timeouts."""

from sqlalchemy import Engine, create_engine

from ledger_core.config import Settings, normalize_database_url

connect_timeout_seconds = 5
# Waiting for a free connection of the pool, under load, before giving up with a 503.
pool_timeout_seconds = 10


def make_engine(settings: Settings) -> Engine:
    return create_engine(
        normalize_database_url(settings.database_url),
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_overflow_max,
        # No pre-ping: it would cost a round trip on every checkout. A connection that died
        # with its server fails its first statement instead; SQLAlchemy then discards the
        # whole pool, the request answers 503 (a task retries), and the next one reconnects.
        pool_pre_ping=False,
        pool_timeout=pool_timeout_seconds,
        connect_args={
            "connect_timeout": connect_timeout_seconds,
            "options": f"-c statement_timeout={settings.database_statement_timeout_milliseconds}",
            "application_name": "ledger",
        },
    )
