"""Books: API keys, currencies, accounts, transfers, entries and idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _created_at() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    )


def upgrade() -> None:
    op.create_table(
        "custom_currencies",
        sa.Column("code", sa.Text, nullable=False),
        sa.Column("exponent", sa.SmallInteger, nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("code", name="pk_custom_currencies"),
        sa.CheckConstraint(
            "exponent BETWEEN 0 AND 18", name=op.f("ck_custom_currencies_exponent_range")
        ),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("key_hash", sa.LargeBinary, nullable=False),
        _created_at(),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        sa.CheckConstraint(
            "scope IN ('read', 'write', 'admin')", name=op.f("ck_api_keys_scope_known")
        ),
    )
    op.create_table(
        "accounts",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("name", sa.Text),
        sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("allow_overdraft", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("is_system", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("balance", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
        sa.CheckConstraint(
            "allow_overdraft OR balance >= 0", name=op.f("ck_accounts_no_overdraft")
        ),
        sa.CheckConstraint(
            "NOT is_system OR allow_overdraft", name=op.f("ck_accounts_system_may_go_negative")
        ),
    )
    op.create_index(
        "uq_accounts_system_currency",
        "accounts",
        ["currency"],
        unique=True,
        postgresql_where=sa.text("is_system"),
    )
    op.create_table(
        "transfers",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default=sa.text("'pending'")),
        sa.Column("rejection_reason", sa.Text),
        sa.Column("source_account_id", sa.Text, nullable=False),
        sa.Column("destination_account_id", sa.Text, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("api_key_id", sa.Text, nullable=False),
        _created_at(),
        sa.Column("posted_at", sa.DateTime(timezone=True)),
        sa.Column("finalized_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_transfers"),
        sa.ForeignKeyConstraint(
            ["source_account_id"], ["accounts.id"], name="fk_transfers_source_account_id_accounts"
        ),
        sa.ForeignKeyConstraint(
            ["destination_account_id"],
            ["accounts.id"],
            name="fk_transfers_destination_account_id_accounts",
        ),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name="fk_transfers_api_key_id_api_keys"
        ),
        sa.CheckConstraint(
            "kind IN ('deposit', 'withdrawal', 'transfer')", name=op.f("ck_transfers_kind_known")
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'posted', 'rejected')", name=op.f("ck_transfers_status_known")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_transfers_amount_positive")),
        sa.CheckConstraint(
            "source_account_id <> destination_account_id",
            name=op.f("ck_transfers_distinct_accounts"),
        ),
        sa.CheckConstraint(
            "(status = 'rejected') = (rejection_reason IS NOT NULL)",
            name=op.f("ck_transfers_reason_iff_rejected"),
        ),
        sa.CheckConstraint(
            "(status = 'posted') = (posted_at IS NOT NULL)",
            name=op.f("ck_transfers_posted_at_iff_posted"),
        ),
        sa.CheckConstraint(
            "(status = 'pending') = (finalized_at IS NULL)",
            name=op.f("ck_transfers_finalized_at_iff_final"),
        ),
    )
    for name, column in (
        ("ix_transfers_pending_created_at", "created_at"),
        ("ix_transfers_pending_source", "source_account_id"),
        ("ix_transfers_pending_destination", "destination_account_id"),
    ):
        op.create_index(name, "transfers", [column], postgresql_where=sa.text("status = 'pending'"))
    op.create_table(
        "entries",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("transfer_id", sa.Text, nullable=False),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("balance_after", sa.BigInteger, nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name="pk_entries"),
        sa.ForeignKeyConstraint(
            ["transfer_id"], ["transfers.id"], name="fk_entries_transfer_id_transfers"
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_entries_account_id_accounts"
        ),
        sa.CheckConstraint("amount <> 0", name=op.f("ck_entries_amount_nonzero")),
        sa.UniqueConstraint("transfer_id", "account_id", name="uq_entries_transfer_id_account_id"),
    )
    op.create_index("ix_entries_account_id_id", "entries", ["account_id", "id"])
    op.create_table(
        "idempotency_keys",
        sa.Column("api_key_id", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("request_hash", sa.Text, nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("response_body", JSONB, nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("api_key_id", "key", name="pk_idempotency_keys"),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name="fk_idempotency_keys_api_key_id_api_keys"
        ),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    for table in (
        "idempotency_keys",
        "entries",
        "transfers",
        "accounts",
        "api_keys",
        "custom_currencies",
    ):
        op.drop_table(table)
