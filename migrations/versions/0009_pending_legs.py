"""Pending legs by account in an index of their own: reading an account's pending amounts
no longer reads every leg it ever had.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

`transfer_legs.pending` is true while the leg's movement is PENDING. A trigger keeps it so
on every change of a legged movement's status (posted, rejected, quarantined, requeued),
whichever statement makes it, and the partial index on (account_id) WHERE pending holds
only the legs in flight: a merchant with a million posted payments has none of them in it.
It replaces the index of every leg by account, which nothing else read.

Adding the column with a constant default rewrites nothing; the legs of movements pending
at the time are then marked, which are few.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

FOLLOW_STATUS = """
CREATE FUNCTION ledger_legs_follow_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE transfer_legs SET pending = (NEW.status = 'pending') WHERE transfer_id = NEW.id;
    RETURN NULL;
END $$
"""
# Only legged movements have legs: for the two-account kinds the WHEN is all it costs.
FOLLOW_STATUS_TRIGGER = """
CREATE TRIGGER transfers_legs_follow_status AFTER UPDATE OF status ON transfers
FOR EACH ROW
WHEN (OLD.status IS DISTINCT FROM NEW.status
      AND NEW.kind IN ('transaction', 'payment', 'reversal'))
EXECUTE FUNCTION ledger_legs_follow_status()
"""


def upgrade() -> None:
    op.add_column(
        "transfer_legs",
        sa.Column("pending", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.execute(
        "UPDATE transfer_legs l SET pending = true FROM transfers t"
        " WHERE t.id = l.transfer_id AND t.status = 'pending'"
    )
    # A leg is stored with its PENDING movement.
    op.alter_column("transfer_legs", "pending", server_default=sa.true())
    op.execute(FOLLOW_STATUS)
    op.execute(FOLLOW_STATUS_TRIGGER)
    op.create_index(
        "ix_transfer_legs_pending_account_id",
        "transfer_legs",
        ["account_id"],
        postgresql_where=sa.text("pending"),
    )
    op.drop_index("ix_transfer_legs_account_id", table_name="transfer_legs")


def downgrade() -> None:
    op.create_index("ix_transfer_legs_account_id", "transfer_legs", ["account_id"])
    op.drop_index("ix_transfer_legs_pending_account_id", table_name="transfer_legs")
    op.execute("DROP TRIGGER transfers_legs_follow_status ON transfers")
    op.execute("DROP FUNCTION ledger_legs_follow_status()")
    op.drop_column("transfer_legs", "pending")
