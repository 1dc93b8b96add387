"""Movements beyond two-entry transfers: N-entry transactions, payments, holds and their
settlement, reversals; balances in the past.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

- transfers hold every movement. The two-account kinds keep source and destination; a
  transaction or a payment has NULL there and its legs in transfer_legs. Reversals name
  what they reverse, and the original counts what was reversed of it, below its amount.
- holds: the reservation a hold movement makes, its state, and the one action (capture,
  void, expiry, cashback) allowed to settle or release it.
- accounts carry what active holds reserve (held_out) and will bring (held_in); the
  overdraft check now keeps balance - held_out from going below zero.
- entries get a leg number (an account may appear twice in a transaction), unique per
  movement, and the clock of their insert, which follows the account's lock order, so the
  last entry at or before an instant holds the balance at that instant.

Numbering the legs rewrites every row of `entries`, and the new checks read `transfers`
whole, under the locks this transaction holds until it commits: on a large ledger run it
in a maintenance window (migrations/env.py's statement bound is lifted for this one).

Downgrading refuses while any movement of the new kinds exists: the old schema has no
place for them (nor for an account's second entry in one movement).
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

KINDS = (
    "'deposit', 'withdrawal', 'transfer', 'transaction', 'payment', 'hold', 'capture',"
    " 'cashback', 'void', 'expire', 'reversal'"
)
OLD_KINDS = "'deposit', 'withdrawal', 'transfer'"
LEGGED = "('transaction', 'payment', 'reversal')"
HOLD_ACTIONS = "('capture', 'cashback', 'void', 'expire')"
HOLD_STATUSES = "'pending', 'active', 'captured', 'voided', 'expired', 'rejected'"
REFUSE_NEW_KINDS = """
DO $$ BEGIN
  IF EXISTS (SELECT 1 FROM transfers WHERE kind NOT IN ('deposit', 'withdrawal', 'transfer'))
  THEN RAISE EXCEPTION 'downgrade of 0006 refused: movements of kinds that 0005 cannot hold'
                       ' exist (transactions, payments, holds, reversals)';
  END IF;
END $$
"""


def _check(table: str, name: str, condition: str) -> None:
    op.create_check_constraint(op.f(f"ck_{table}_{name}"), table, condition)


def upgrade() -> None:
    # Rewriting `entries` takes as long as copying it: no statement bound for this
    # migration's transaction. lock_timeout stays, so it never queues behind a long
    # transaction while every posting queues behind it.
    op.execute("SET LOCAL statement_timeout = 0")
    # ---- transfers: every kind of movement
    op.drop_constraint(op.f("ck_transfers_kind_known"), "transfers", type_="check")
    _check("transfers", "kind_known", f"kind IN ({KINDS})")
    for column in ("source_account_id", "destination_account_id", "currency"):
        op.alter_column("transfers", column, nullable=True)
    for column in (
        sa.Column("hold_id", sa.Text),
        sa.Column("reverses_id", sa.Text),
        sa.Column("reversal_amount", sa.BigInteger),
        sa.Column("reversed_amount", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("effective_at", sa.DateTime(timezone=True)),
        sa.Column("rejected_account_id", sa.Text),
    ):
        op.add_column("transfers", column)
    _check(
        "transfers",
        "accounts_or_legs",
        f"(kind IN {LEGGED}) = (source_account_id IS NULL)"
        " AND (source_account_id IS NULL) = (destination_account_id IS NULL)",
    )
    _check("transfers", "reversed_within_amount", "reversed_amount BETWEEN 0 AND amount")
    _check(
        "transfers",
        "reversal_names_original",
        "(kind = 'reversal') = (reverses_id IS NOT NULL)"
        " AND (kind = 'reversal') = (reversal_amount IS NOT NULL)"
        " AND (reversal_amount IS NULL OR reversal_amount > 0)",
    )
    _check("transfers", "action_names_hold", f"(kind IN {HOLD_ACTIONS}) = (hold_id IS NOT NULL)")
    op.create_index(
        "ix_transfers_reverses_id",
        "transfers",
        ["reverses_id"],
        postgresql_where=sa.text("reverses_id IS NOT NULL"),
    )

    op.create_table(
        "transfer_legs",
        sa.Column("transfer_id", sa.Text, nullable=False),
        sa.Column("leg", sa.SmallInteger, nullable=False),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("transfer_id", "leg", name="pk_transfer_legs"),
        sa.ForeignKeyConstraint(
            ["transfer_id"], ["transfers.id"], name="fk_transfer_legs_transfer_id_transfers"
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_transfer_legs_account_id_accounts"
        ),
        sa.CheckConstraint("amount <> 0", name=op.f("ck_transfer_legs_amount_nonzero")),
    )
    op.create_index("ix_transfer_legs_account_id", "transfer_legs", ["account_id"])

    # ---- holds
    op.create_table(
        "holds",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("source_account_id", sa.Text, nullable=False),
        sa.Column("destination_account_id", sa.Text, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default=sa.text("'pending'")),
        sa.Column("action_id", sa.Text),
        sa.Column("captured_amount", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("capture_at", sa.DateTime(timezone=True)),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("id", name="pk_holds"),
        sa.ForeignKeyConstraint(["id"], ["transfers.id"], name="fk_holds_id_transfers"),
        sa.CheckConstraint(f"status IN ({HOLD_STATUSES})", name=op.f("ck_holds_status_known")),
        sa.CheckConstraint("amount > 0", name=op.f("ck_holds_amount_positive")),
        sa.CheckConstraint(
            "captured_amount BETWEEN 0 AND amount", name=op.f("ck_holds_captured_within_amount")
        ),
    )
    op.create_index(
        "ix_holds_expires_at",
        "holds",
        ["expires_at"],
        postgresql_where=sa.text("status = 'active' AND action_id IS NULL"),
    )
    op.create_index(
        "ix_holds_capture_at",
        "holds",
        ["capture_at"],
        postgresql_where=sa.text("status = 'active' AND action_id IS NULL"),
    )

    # ---- payments: what a payment is besides its legs
    op.create_table(
        "payments",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("customer_account_id", sa.Text, nullable=False),
        sa.Column("merchant_account_id", sa.Text, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("rewards_account_id", sa.Text),
        sa.Column("basis_points", sa.Integer),
        sa.Column("cashback_amount", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        # Set when the cashback waits: the hold that releases it.
        sa.Column("cashback_hold_id", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_payments"),
        sa.ForeignKeyConstraint(["id"], ["transfers.id"], name="fk_payments_id_transfers"),
        sa.CheckConstraint(
            "basis_points IS NULL OR basis_points BETWEEN 0 AND 10000",
            name=op.f("ck_payments_basis_points_range"),
        ),
        # Rounding down: cashback never exceeds its share of the amount.
        sa.CheckConstraint(
            "cashback_amount::numeric * 10000 <= amount::numeric * coalesce(basis_points, 0)",
            name=op.f("ck_payments_cashback_rounded_down"),
        ),
    )

    # ---- accounts: what holds reserve
    for column in ("held_out", "held_in"):
        op.add_column(
            "accounts",
            sa.Column(column, sa.Numeric(39, 0), nullable=False, server_default=sa.text("0")),
        )
    _check("accounts", "held_nonnegative", "held_out >= 0 AND held_in >= 0")
    op.drop_constraint(op.f("ck_accounts_no_overdraft"), "accounts", type_="check")
    _check("accounts", "no_overdraft", "allow_overdraft OR balance - held_out >= 0")

    # ---- entries: a leg number, and the clock of their insert
    op.add_column("entries", sa.Column("leg", sa.SmallInteger))
    op.execute("ALTER TABLE entries DISABLE TRIGGER entries_are_immutable")
    op.execute(
        "UPDATE entries e SET leg = n.leg FROM ("
        " SELECT id, (row_number() OVER (PARTITION BY transfer_id ORDER BY id) - 1) AS leg"
        " FROM entries) n WHERE e.id = n.id"
    )
    op.execute("ALTER TABLE entries ENABLE TRIGGER entries_are_immutable")
    op.alter_column("entries", "leg", nullable=False)
    op.drop_constraint("uq_entries_transfer_id_account_id", "entries", type_="unique")
    op.create_unique_constraint("uq_entries_transfer_id_leg", "entries", ["transfer_id", "leg"])
    op.alter_column("entries", "created_at", server_default=sa.text("clock_timestamp()"))
    op.create_index("ix_entries_account_id_created_at", "entries", ["account_id", "created_at"])


def downgrade() -> None:
    op.execute(REFUSE_NEW_KINDS)
    op.execute("SET LOCAL statement_timeout = 0")
    op.drop_index("ix_entries_account_id_created_at", table_name="entries")
    op.alter_column("entries", "created_at", server_default=sa.func.now())
    op.drop_constraint("uq_entries_transfer_id_leg", "entries", type_="unique")
    op.create_unique_constraint(
        "uq_entries_transfer_id_account_id", "entries", ["transfer_id", "account_id"]
    )
    op.drop_column("entries", "leg")
    op.drop_constraint(op.f("ck_accounts_no_overdraft"), "accounts", type_="check")
    _check("accounts", "no_overdraft", "allow_overdraft OR balance >= 0")
    op.drop_constraint(op.f("ck_accounts_held_nonnegative"), "accounts", type_="check")
    for column in ("held_out", "held_in"):
        op.drop_column("accounts", column)
    op.drop_table("payments")
    op.drop_table("holds")
    op.drop_table("transfer_legs")
    op.drop_index("ix_transfers_reverses_id", table_name="transfers")
    for name in (
        "action_names_hold",
        "reversal_names_original",
        "reversed_within_amount",
        "accounts_or_legs",
        "kind_known",
    ):
        op.drop_constraint(op.f(f"ck_transfers_{name}"), "transfers", type_="check")
    for column in (
        "hold_id",
        "reverses_id",
        "reversal_amount",
        "reversed_amount",
        "effective_at",
        "rejected_account_id",
    ):
        op.drop_column("transfers", column)
    _check("transfers", "kind_known", f"kind IN ({OLD_KINDS})")
    for column in ("source_account_id", "destination_account_id", "currency"):
        op.alter_column("transfers", column, nullable=False)
