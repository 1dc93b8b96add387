"""Account owners and key expiry: a `write` key debits only the accounts of its owner.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04

- `api_keys.owner`: whose accounts the key may debit. Existing keys become their own owner
  (their id), as new keys are by default; then the column is NOT NULL. The old release's
  `ledger api-keys create` does not set it, so create keys with the new release's CLI
  once this ran (the API itself never writes api_keys).
- `api_keys.expires_at`: NULL for a key that does not expire (every existing key).
- `accounts.owner`: the owner of the key that opened the account. Accounts opened before
  this migration keep NULL: only admin keys may debit them, until an operator sets their
  owner (docs/operations.md, "Upgrading to account owners"). Adding a nullable column
  without a default rewrites nothing.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("owner", sa.Text))
    op.execute("UPDATE api_keys SET owner = id")
    op.alter_column("api_keys", "owner", nullable=False)
    op.create_check_constraint(
        op.f("ck_api_keys_owner_length"), "api_keys", "length(owner) BETWEEN 1 AND 255"
    )
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True)))
    op.add_column("accounts", sa.Column("owner", sa.Text))


def downgrade() -> None:
    op.drop_column("accounts", "owner")
    op.drop_column("api_keys", "expires_at")
    op.drop_constraint(op.f("ck_api_keys_owner_length"), "api_keys", type_="check")
    op.drop_column("api_keys", "owner")
