"""Webhook hardening: fenced leases, a per-endpoint concurrency cap, and the replay of events
an endpoint missed while it was disabled.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

- `webhook_deliveries.lease_token`: set by each claim, required by the UPDATE that records
  the attempt, so a worker whose lease expired (and was taken over) cannot overwrite the
  outcome of the newer attempt.
- `ix_webhook_deliveries_endpoint_id_leased`: the claim counts the live leases of the
  delivery's endpoint against `WEBHOOK_ENDPOINT_CONCURRENCY_MAX`; only leased rows are in it.
- `webhook_endpoints.disabled_at`: when it was last disabled, by the database's clock.
- `events.recorded_at`: the database's clock when the posting statement inserted the row,
  which is after that statement's snapshot. An event whose posting did not see its endpoint
  enabled was therefore recorded after the endpoint's `disabled_at`: re-enabling replays
  exactly those. The default is set after the column is added, so existing rows keep NULL
  (replay reads `created_at` for them) and the table is not rewritten.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("webhook_deliveries", sa.Column("lease_token", sa.Text))
    op.create_index(
        "ix_webhook_deliveries_endpoint_id_leased",
        "webhook_deliveries",
        ["endpoint_id"],
        postgresql_where=sa.text("leased_until IS NOT NULL"),
    )
    op.add_column("webhook_endpoints", sa.Column("disabled_at", sa.DateTime(timezone=True)))
    # Endpoints disabled before this migration: their disable time is unknown; the time of
    # the migration is the earliest one known to be right for events recorded from now on.
    op.execute("UPDATE webhook_endpoints SET disabled_at = now() WHERE status = 'disabled'")
    op.add_column("events", sa.Column("recorded_at", sa.DateTime(timezone=True)))
    op.execute("ALTER TABLE events ALTER COLUMN recorded_at SET DEFAULT clock_timestamp()")


def downgrade() -> None:
    op.drop_column("events", "recorded_at")
    op.drop_column("webhook_endpoints", "disabled_at")
    op.drop_index("ix_webhook_deliveries_endpoint_id_leased", table_name="webhook_deliveries")
    op.drop_column("webhook_deliveries", "lease_token")
