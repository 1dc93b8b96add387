"""The schema, as SQLAlchemy Core tables. Migrations create it; `alembic check` keeps them equal.

Each invariant the domain relies on has a constraint here too, so a bug in code cannot
write books that do not balance.
"""

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _created_at() -> Column[object]:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


custom_currencies = Table(
    "custom_currencies",
    metadata,
    Column("code", Text, primary_key=True),
    Column("exponent", SmallInteger, nullable=False),
    _created_at(),
    CheckConstraint("exponent BETWEEN 0 AND 18", name="exponent_range"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("scope", Text, nullable=False),
    # SHA-256 of the secret: keys are high-entropy random tokens, so a fast hash is enough.
    Column("key_hash", LargeBinary, nullable=False, unique=True),
    _created_at(),
    Column("revoked_at", DateTime(timezone=True)),
    CheckConstraint("scope IN ('read', 'write', 'admin')", name="scope_known"),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", Text, primary_key=True),
    Column("currency", Text, nullable=False),
    Column("name", Text),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("allow_overdraft", Boolean, nullable=False, server_default=text("false")),
    Column("is_system", Boolean, nullable=False, server_default=text("false")),
    Column("balance", Numeric(39, 0), nullable=False, server_default=text("0")),
    _created_at(),
    CheckConstraint("allow_overdraft OR balance >= 0", name="no_overdraft"),
    CheckConstraint("NOT is_system OR allow_overdraft", name="system_may_go_negative"),
    Index(
        "uq_accounts_system_currency",
        "currency",
        unique=True,
        postgresql_where=text("is_system"),
    ),
)

transfer_batches = Table(
    "transfer_batches",
    metadata,
    Column("id", Text, primary_key=True),
    Column("api_key_id", Text, ForeignKey("api_keys.id"), nullable=False),
    # The key lives with what it created, for as long as it exists: a retry, however late,
    # finds this batch instead of accepting its transfers again.
    Column("idempotency_key", Text, nullable=False),
    Column("request_hash", Text, nullable=False),
    Column("atomic", Boolean, nullable=False),
    Column("item_count", Integer, nullable=False),
    _created_at(),
    UniqueConstraint("api_key_id", "idempotency_key"),
    CheckConstraint("item_count BETWEEN 1 AND 1000", name="item_count_range"),
)

transfers = Table(
    "transfers",
    metadata,
    Column("id", Text, primary_key=True),
    # Acceptance order: posting applies transfers in it, and claims the oldest first.
    Column("seq", BigInteger, Identity(always=False), nullable=False, unique=True),
    Column("kind", Text, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'pending'")),
    Column("rejection_reason", Text),
    Column("source_account_id", Text, ForeignKey("accounts.id"), nullable=False),
    Column("destination_account_id", Text, ForeignKey("accounts.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", Text, nullable=False),
    Column("description", Text),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("api_key_id", Text, ForeignKey("api_keys.id"), nullable=False),
    # Single requests keep their Idempotency-Key here (batch items: on their batch), so
    # that a retry after the 24-hour response cache has let go still finds the transfer.
    Column("idempotency_key", Text),
    Column("request_hash", Text),
    Column("batch_id", Text, ForeignKey("transfer_batches.id")),
    # The transfers of an atomic batch share the id of its first transfer, the group's head.
    # Only heads are claimed; a head brings its group along.
    Column("group_id", Text),
    # Posting shard (POSTING_SHARDS), from the debited account.
    Column("shard", SmallInteger, nullable=False, server_default=text("0")),
    # Failed posting attempts (errors that were not about money) and when to try again.
    Column("posting_attempts", SmallInteger, nullable=False, server_default=text("0")),
    Column("posting_retry_at", DateTime(timezone=True)),
    Column("posting_error", Text),
    _created_at(),
    Column("posted_at", DateTime(timezone=True)),
    Column("finalized_at", DateTime(timezone=True)),
    CheckConstraint("kind IN ('deposit', 'withdrawal', 'transfer')", name="kind_known"),
    CheckConstraint(
        "status IN ('pending', 'posted', 'rejected', 'quarantined')", name="status_known"
    ),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("source_account_id <> destination_account_id", name="distinct_accounts"),
    CheckConstraint(
        "(status = 'rejected') = (rejection_reason IS NOT NULL)", name="reason_iff_rejected"
    ),
    CheckConstraint("(status = 'posted') = (posted_at IS NOT NULL)", name="posted_at_iff_posted"),
    CheckConstraint(
        "(status IN ('posted', 'rejected')) = (finalized_at IS NOT NULL)",
        name="finalized_at_iff_final",
    ),
    CheckConstraint(
        "status <> 'quarantined' OR posting_error IS NOT NULL", name="quarantined_has_error"
    ),
    CheckConstraint("posting_attempts >= 0", name="posting_attempts_nonnegative"),
    CheckConstraint(
        "(idempotency_key IS NULL) = (request_hash IS NULL)", name="key_with_request_hash"
    ),
    CheckConstraint("idempotency_key IS NULL OR batch_id IS NULL", name="key_on_transfer_or_batch"),
    Index(
        "uq_transfers_api_key_id_idempotency_key",
        "api_key_id",
        "idempotency_key",
        unique=True,
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
    # What posting claims, oldest first: PENDING single transfers and group heads.
    Index(
        "ix_transfers_claimable",
        "shard",
        "seq",
        postgresql_where=text("status = 'pending' AND (group_id IS NULL OR group_id = id)"),
    ),
    Index("ix_transfers_group_id", "group_id", postgresql_where=text("group_id IS NOT NULL")),
    Index("ix_transfers_batch_id", "batch_id", postgresql_where=text("batch_id IS NOT NULL")),
    # The sweeper and the pending balances read only PENDING rows: keep those indexes small.
    Index(
        "ix_transfers_pending_created_at",
        "created_at",
        postgresql_where=text("status = 'pending'"),
    ),
    Index(
        "ix_transfers_pending_source",
        "source_account_id",
        postgresql_where=text("status = 'pending'"),
    ),
    Index(
        "ix_transfers_pending_destination",
        "destination_account_id",
        postgresql_where=text("status = 'pending'"),
    ),
)

entries = Table(
    "entries",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    # No foreign keys: the trigger entries_refer_and_balance (migration 0004) checks a whole
    # statement's entries at once, that their transfers and accounts exist and that each
    # transfer balances per currency; accounts and transfers cannot be deleted.
    Column("transfer_id", Text, nullable=False),
    Column("account_id", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("balance_after", Numeric(39, 0), nullable=False),
    _created_at(),
    CheckConstraint("amount <> 0", name="amount_nonzero"),
    # A transfer touches an account once: a second posting of it cannot insert its entries.
    UniqueConstraint("transfer_id", "account_id"),
    Index("ix_entries_account_id_id", "account_id", "id"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("api_key_id", Text, ForeignKey("api_keys.id"), nullable=False),
    Column("key", Text, nullable=False),
    Column("request_hash", Text, nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("response_body", JSONB, nullable=False),
    _created_at(),
    PrimaryKeyConstraint("api_key_id", "key"),
    Index("ix_idempotency_keys_created_at", "created_at"),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", Text, primary_key=True),
    Column("url", Text, nullable=False),
    Column("events", JSONB, nullable=False),
    # NULL: every account.
    Column("account_ids", JSONB),
    Column("description", Text),
    Column("status", Text, nullable=False, server_default=text("'enabled'")),
    Column("disabled_reason", Text),
    # Kept in clear: every delivery is signed with it. Shown to clients only on creation
    # and rotation.
    Column("secret", Text, nullable=False),
    Column("previous_secret", Text),
    Column("previous_secret_expires_at", DateTime(timezone=True)),
    Column("last_success_at", DateTime(timezone=True)),
    Column("failing_since", DateTime(timezone=True)),
    _created_at(),
    Column("deleted_at", DateTime(timezone=True)),
    CheckConstraint("status IN ('enabled', 'disabled')", name="status_known"),
)

events = Table(
    "events",
    metadata,
    Column("id", Text, primary_key=True),
    Column("type", Text, nullable=False),
    # No foreign key: events are written from the rows the posting statement finalises,
    # and transfers cannot be deleted (migration 0004).
    Column("transfer_id", Text, nullable=False),
    # The exact bytes every attempt sends and signs; text, since jsonb would reorder keys.
    Column("payload", Text, nullable=False),
    _created_at(),
    # One event per final transfer: a second posting cannot emit a second event.
    UniqueConstraint("transfer_id"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Text, primary_key=True),
    # No foreign keys, as for events: written with their event, and neither events nor
    # endpoints can be deleted (endpoints are deleted softly).
    Column("event_id", Text, nullable=False),
    Column("endpoint_id", Text, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'pending'")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", DateTime(timezone=True)),
    # A worker that claimed the delivery owns it until then; a crashed one loses it.
    Column("leased_until", DateTime(timezone=True)),
    # A task for it is on the queue until then; the scheduler does not enqueue another.
    Column("enqueued_until", DateTime(timezone=True)),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    _created_at(),
    CheckConstraint(
        "status IN ('pending', 'failed', 'succeeded', 'abandoned')", name="status_known"
    ),
    CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
    UniqueConstraint("event_id", "endpoint_id"),
    Index(
        "ix_webhook_deliveries_due",
        "next_attempt_at",
        postgresql_where=text("status IN ('pending', 'failed')"),
    ),
    Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("delivery_id", Text, ForeignKey("webhook_deliveries.id"), nullable=False),
    Column("attempted_at", DateTime(timezone=True), nullable=False),
    Column("status_code", Integer),
    Column("error", Text),
    Column("duration_milliseconds", Integer, nullable=False),
    Index("ix_webhook_attempts_delivery_id_id", "delivery_id", "id"),
)
