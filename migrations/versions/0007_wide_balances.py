"""128-bit balances: `accounts.balance` and `entries.balance_after` become numeric(39,0).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

Amounts stay int64, but a balance is a sum of them: one deposit of 2^63 - 1 takes its
currency's system account to the bottom of int64, after which every deposit of that
currency would be refused. Balances get the +/-2^127 range TigerBeetle gives them.

This change was first edited into 0001, which a database migrated before the edit never
runs again: it is its own step now. On a database that already has the wide columns (made
by the edited 0001) the ALTER is a no-op; otherwise PostgreSQL rewrites both tables under
an ACCESS EXCLUSIVE lock, so on a large ledger run it in a maintenance window (the time
is that of copying `entries` once; migrations/env.py's statement bound is lifted
for this one).

Downgrading refuses, rather than truncates, a balance beyond int64.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

COLUMNS = (("accounts", "balance"), ("entries", "balance_after"))


def upgrade() -> None:
    # The rewrite takes as long as copying `entries` does: no statement bound for this
    # migration's transaction. lock_timeout stays, so it never queues behind a long
    # transaction while every posting queues behind it.
    op.execute("SET LOCAL statement_timeout = 0")
    for table, column in COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE numeric(39, 0)")


def downgrade() -> None:
    op.execute("SET LOCAL statement_timeout = 0")  # the same rewrite, back
    for table, column in COLUMNS:
        # An out-of-range value makes the cast, and so the downgrade, fail.
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE bigint")
