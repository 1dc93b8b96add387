"""Books guarded by set-based triggers: entries refer to real transfers and accounts and
balance per transfer and currency, checked once per statement; the books and the outbox
are append-only.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

Posting writes a batch's two thousand entries in one statement. Foreign keys checked them
row by row, two triggers per entry, and took more time than the insert itself. One
statement-level trigger now checks the whole statement's entries with two joins, and
checks more than the foreign keys did: that each transfer's entries sum to zero in each
currency. What the foreign keys also gave, that a referenced row cannot go away, comes
from refusing DELETE on accounts and transfers (and any change to entries).

The outbox (events, deliveries) is written by the posting statement from the rows it
finalises, so its references are right by construction; its foreign keys cost a trigger
per row too, and go. Events and endpoints refuse DELETE instead (endpoints are deleted
softly), so nothing a delivery names can disappear.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CHECK_NEW_ENTRIES = """
CREATE FUNCTION ledger_check_new_entries() RETURNS trigger LANGUAGE plpgsql
-- A transition table has no statistics: left to itself the planner hashes whole tables
-- (a scan of every transfer per statement). A thousand index probes are what is wanted.
SET enable_hashjoin = off SET enable_mergejoin = off
AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.transfer_id, bool_or(t.id IS NULL) AS no_transfer,
           bool_or(a.id IS NULL) AS no_account, a.currency, sum(n.amount) AS total
    INTO bad
    FROM new_entries n
    LEFT JOIN transfers t ON t.id = n.transfer_id
    LEFT JOIN accounts a ON a.id = n.account_id
    GROUP BY n.transfer_id, a.currency
    HAVING bool_or(t.id IS NULL) OR bool_or(a.id IS NULL) OR sum(n.amount) <> 0
    -- A missing row explains an imbalance beside it: report it first.
    ORDER BY bool_or(t.id IS NULL) DESC, bool_or(a.id IS NULL) DESC
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    ELSIF bad.no_transfer THEN
        RAISE EXCEPTION 'entries of transfer % refused: no such transfer', bad.transfer_id
            USING ERRCODE = 'foreign_key_violation';
    ELSIF bad.no_account THEN
        RAISE EXCEPTION 'entries of transfer % refused: no such account', bad.transfer_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RAISE EXCEPTION 'entries of transfer % refused: % sums to % instead of 0',
        bad.transfer_id, bad.currency, bad.total
        USING ERRCODE = 'check_violation';
END $$
"""
REFUSE_CHANGE = """
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % refused: the books are append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END $$
"""


OUTBOX_FOREIGN_KEYS = (
    ("events", "fk_events_transfer_id_transfers", "transfer_id", "transfers"),
    ("webhook_deliveries", "fk_webhook_deliveries_event_id_events", "event_id", "events"),
    (
        "webhook_deliveries",
        "fk_webhook_deliveries_endpoint_id_webhook_endpoints",
        "endpoint_id",
        "webhook_endpoints",
    ),
)
KEPT_TABLES = ("accounts", "transfers", "events", "webhook_endpoints")


def upgrade() -> None:
    op.drop_constraint("fk_entries_transfer_id_transfers", "entries", type_="foreignkey")
    op.drop_constraint("fk_entries_account_id_accounts", "entries", type_="foreignkey")
    for table, name, _column, _referred in OUTBOX_FOREIGN_KEYS:
        op.drop_constraint(name, table, type_="foreignkey")
    op.execute(CHECK_NEW_ENTRIES)
    op.execute(
        "CREATE TRIGGER entries_refer_and_balance AFTER INSERT ON entries"
        " REFERENCING NEW TABLE AS new_entries"
        " FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_new_entries()"
    )
    op.execute(REFUSE_CHANGE)
    op.execute(
        "CREATE TRIGGER entries_are_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON entries"
        " FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()"
    )
    for table in KEPT_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_are_kept BEFORE DELETE OR TRUNCATE ON {table}"
            " FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()"
        )


def downgrade() -> None:
    for table in KEPT_TABLES:
        op.execute(f"DROP TRIGGER {table}_are_kept ON {table}")
    op.execute("DROP TRIGGER entries_are_immutable ON entries")
    op.execute("DROP FUNCTION ledger_refuse_change()")
    op.execute("DROP TRIGGER entries_refer_and_balance ON entries")
    op.execute("DROP FUNCTION ledger_check_new_entries()")
    op.create_foreign_key(
        "fk_entries_account_id_accounts", "entries", "accounts", ["account_id"], ["id"]
    )
    op.create_foreign_key(
        "fk_entries_transfer_id_transfers", "entries", "transfers", ["transfer_id"], ["id"]
    )
    for table, name, column, referred in OUTBOX_FOREIGN_KEYS:
        op.create_foreign_key(name, table, referred, [column], ["id"])
