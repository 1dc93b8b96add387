"""Alembic environment: the URL comes from DATABASE_URL; each migration runs in its own
transaction under an advisory lock, with lock and statement timeouts so a migration
never queues behind live traffic for long."""

from alembic import context
from sqlalchemy import create_engine, pool, text

from ledger_core.adapters.tables import metadata
from ledger_core.config import database_url_from_env

# Any number works, as long as every deployment uses the same one.
MIGRATION_ADVISORY_LOCK_ID = 7_318_004_417
migration_lock_timeout_milliseconds = 5_000
migration_statement_timeout_milliseconds = 60_000


def run_migrations_offline() -> None:
    context.configure(url=database_url_from_env(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = context.config.attributes.get("database_url") or database_url_from_env()
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_ADVISORY_LOCK_ID})
        connection.execute(text(f"SET lock_timeout = {migration_lock_timeout_milliseconds}"))
        connection.execute(
            text(f"SET statement_timeout = {migration_statement_timeout_milliseconds}")
        )
        connection.commit()
        context.configure(
            connection=connection,
            target_metadata=metadata,
            transaction_per_migration=True,
            compare_server_default=True,
        )
        try:
            with context.begin_transaction():
                context.run_migrations()
        finally:
            connection.execute(
                text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_ADVISORY_LOCK_ID}
            )
            connection.commit()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
