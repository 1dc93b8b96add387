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
    true,
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
    # Whose accounts the key may debit (migration 0008): keys of one owner share them.
    Column("owner", Text, nullable=False),
    # NULL: the key does not expire.
    Column("expires_at", DateTime(timezone=True)),
    CheckConstraint("scope IN ('read', 'write', 'admin')", name="scope_known"),
    CheckConstraint("length(owner) BETWEEN 1 AND 255", name="owner_length"),
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
    # What active holds reserve of the account, and will bring it (migration 0006).
    Column("held_out", Numeric(39, 0), nullable=False, server_default=text("0")),
    Column("held_in", Numeric(39, 0), nullable=False, server_default=text("0")),
    _created_at(),
    # The owner of the key that opened it (migration 0008); only keys of that owner (and
    # admin keys) may debit it. NULL: a system account, or opened before owners existed.
    Column("owner", Text),
    # Held funds cannot be spent: the overdraft rule is on what is left of them.
    CheckConstraint("allow_overdraft OR balance - held_out >= 0", name="no_overdraft"),
    CheckConstraint("held_out >= 0 AND held_in >= 0", name="held_nonnegative"),
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
    # NULL for a transaction or a payment, whose legs are in transfer_legs.
    Column("source_account_id", Text, ForeignKey("accounts.id")),
    Column("destination_account_id", Text, ForeignKey("accounts.id")),
    # What the movement moves: the sum of its debits.
    Column("amount", BigInteger, nullable=False),
    # NULL for a transaction across currencies.
    Column("currency", Text),
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
    # A capture, cashback, void or expiry: the hold it settles or releases.
    Column("hold_id", Text),
    # A reversal: what it reverses, and how much of that one's amount.
    Column("reverses_id", Text),
    Column("reversal_amount", BigInteger),
    # What reversals have reversed of this one, never more than its amount.
    Column("reversed_amount", BigInteger, nullable=False, server_default=text("0")),
    # Given by the client, shown as given; balances in the past follow posting time.
    Column("effective_at", DateTime(timezone=True)),
    # The account whose rule refused a rejected movement (a transaction's offending leg).
    Column("rejected_account_id", Text),
    _created_at(),
    Column("posted_at", DateTime(timezone=True)),
    Column("finalized_at", DateTime(timezone=True)),
    CheckConstraint(
        "kind IN ('deposit', 'withdrawal', 'transfer', 'transaction', 'payment', 'hold',"
        " 'capture', 'cashback', 'void', 'expire', 'reversal')",
        name="kind_known",
    ),
    CheckConstraint(
        "(kind IN ('transaction', 'payment', 'reversal')) = (source_account_id IS NULL)"
        " AND (source_account_id IS NULL) = (destination_account_id IS NULL)",
        name="accounts_or_legs",
    ),
    CheckConstraint("reversed_amount BETWEEN 0 AND amount", name="reversed_within_amount"),
    CheckConstraint(
        "(kind = 'reversal') = (reverses_id IS NOT NULL)"
        " AND (kind = 'reversal') = (reversal_amount IS NOT NULL)"
        " AND (reversal_amount IS NULL OR reversal_amount > 0)",
        name="reversal_names_original",
    ),
    CheckConstraint(
        "(kind IN ('capture', 'cashback', 'void', 'expire')) = (hold_id IS NOT NULL)",
        name="action_names_hold",
    ),
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
    Index(
        "ix_transfers_reverses_id", "reverses_id", postgresql_where=text("reverses_id IS NOT NULL")
    ),
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

transfer_legs = Table(
    "transfer_legs",
    metadata,
    Column("transfer_id", Text, ForeignKey("transfers.id"), nullable=False),
    Column("leg", SmallInteger, nullable=False),
    Column("account_id", Text, ForeignKey("accounts.id"), nullable=False),
    # Signed: negative debits the account.
    Column("amount", BigInteger, nullable=False),
    # While its movement is PENDING; kept by the trigger transfers_legs_follow_status
    # (migration 0009), so the index below holds only legs in flight.
    Column("pending", Boolean, nullable=False, server_default=true()),
    PrimaryKeyConstraint("transfer_id", "leg"),
    CheckConstraint("amount <> 0", name="amount_nonzero"),
    Index("ix_transfer_legs_pending_account_id", "account_id", postgresql_where=text("pending")),
)

holds = Table(
    "holds",
    metadata,
    # The hold's own movement: posting it reserves the funds.
    Column("id", Text, ForeignKey("transfers.id"), primary_key=True),
    Column("source_account_id", Text, nullable=False),
    Column("destination_account_id", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", Text, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'pending'")),
    # The one movement allowed to settle or release it, claimed by the API or by beat.
    Column("action_id", Text),
    Column("captured_amount", BigInteger, nullable=False, server_default=text("0")),
    Column("expires_at", DateTime(timezone=True)),
    # Captured by beat then: the delayed cashback of a payment.
    Column("capture_at", DateTime(timezone=True)),
    _created_at(),
    CheckConstraint(
        "status IN ('pending', 'active', 'captured', 'voided', 'expired', 'rejected')",
        name="status_known",
    ),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("captured_amount BETWEEN 0 AND amount", name="captured_within_amount"),
    Index(
        "ix_holds_expires_at",
        "expires_at",
        postgresql_where=text("status = 'active' AND action_id IS NULL"),
    ),
    Index(
        "ix_holds_capture_at",
        "capture_at",
        postgresql_where=text("status = 'active' AND action_id IS NULL"),
    ),
)

payments = Table(
    "payments",
    metadata,
    Column("id", Text, ForeignKey("transfers.id"), primary_key=True),
    Column("customer_account_id", Text, nullable=False),
    Column("merchant_account_id", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("rewards_account_id", Text),
    Column("basis_points", Integer),
    Column("cashback_amount", BigInteger, nullable=False, server_default=text("0")),
    # Set when the cashback waits: the hold that releases it.
    Column("cashback_hold_id", Text),
    CheckConstraint(
        "basis_points IS NULL OR basis_points BETWEEN 0 AND 10000", name="basis_points_range"
    ),
    # Rounding down: cashback never exceeds its share of the amount (in numeric: the
    # products outgrow bigint).
    CheckConstraint(
        "cashback_amount::numeric * 10000 <= amount::numeric * coalesce(basis_points, 0)",
        name="cashback_rounded_down",
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
    # Its leg's position in the movement: one entry per leg.
    Column("leg", SmallInteger, nullable=False),
    # The clock of the insert, not the transaction's start: an account's entries are
    # inserted in its lock order, so their times follow their balances (as_of reads).
    Column(
        "created_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("clock_timestamp()"),
    ),
    CheckConstraint("amount <> 0", name="amount_nonzero"),
    # One entry per leg: a second posting of a movement cannot insert its entries.
    UniqueConstraint("transfer_id", "leg"),
    Index("ix_entries_account_id_id", "account_id", "id"),
    Index("ix_entries_account_id_created_at", "account_id", "created_at"),
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
    # When it was last disabled, by the database's clock (compared with events.recorded_at
    # when it is enabled again); kept once enabled.
    Column("disabled_at", DateTime(timezone=True)),
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
    # The clock when the posting statement inserted it, after that statement's snapshot:
    # an event recorded after an endpoint's disabled_at may have missed it (migration 0005).
    # NULL for events older than that migration.
    Column("recorded_at", DateTime(timezone=True), server_default=text("clock_timestamp()")),
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
    # Drawn by each claim; recording the attempt requires it, so a worker whose lease was
    # taken over cannot overwrite the newer attempt's outcome.
    Column("lease_token", Text),
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
    # The claim counts an endpoint's live leases against its concurrency cap.
    Index(
        "ix_webhook_deliveries_endpoint_id_leased",
        "endpoint_id",
        postgresql_where=text("leased_until IS NOT NULL"),
    ),
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
