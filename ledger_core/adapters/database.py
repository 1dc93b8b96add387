"""Engine construction: one pool per process, explicit sizes and timeouts."""

from sqlalchemy import Engine, create_engine

from ledger_core.config import Settings, normalize_database_url

connect_timeout_seconds = 5


def make_engine(settings: Settings) -> Engine:
    return create_engine(
        normalize_database_url(settings.database_url),
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_overflow_max,
        # A connection that died with its server (restart, failover) is replaced, not used.
        pool_pre_ping=True,
        pool_timeout=10,
        connect_args={
            "connect_timeout": connect_timeout_seconds,
            "options": f"-c statement_timeout={settings.database_statement_timeout_milliseconds}",
            "application_name": "ledger",
        },
    )
