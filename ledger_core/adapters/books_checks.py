"""SQL that checks the books balance. Each query returns the rows that break one rule."""

from __future__ import annotations

from typing import Final

from sqlalchemy import text

from ledger_core.adapters.sql_connection import LazyConnection

RESERVING_KINDS: Final = "('hold', 'void', 'expire')"
LEGGED_KINDS: Final = "('transaction', 'payment', 'reversal')"
SETTLED_STATUSES: Final = "('captured', 'voided', 'expired')"

CHECKS: Final[dict[str, str]] = {
    # Per currency: a transaction may move two currencies, each balanced on its own.
    "transfer_entries_do_not_sum_to_zero": """
        SELECT e.transfer_id AS subject, sum(e.amount) AS value
        FROM entries e JOIN accounts a ON a.id = e.account_id
        GROUP BY e.transfer_id, a.currency HAVING sum(e.amount) <> 0
    """,
    # Posted: two entries for a two-account movement, one per leg for a transaction, a
    # payment or a reversal, none for what only reserves or releases (a hold, a void, an
    # expiry). Not posted: none.
    "posted_movement_with_wrong_entry_count": f"""
        SELECT t.id AS subject, count(e.id) AS value
        FROM transfers t LEFT JOIN entries e ON e.transfer_id = t.id
        GROUP BY t.id, t.status, t.kind
        HAVING count(e.id) <> CASE
            WHEN t.status <> 'posted' OR t.kind IN {RESERVING_KINDS} THEN 0
            WHEN t.kind IN {LEGGED_KINDS}
                THEN (SELECT count(*) FROM transfer_legs l WHERE l.transfer_id = t.id)
            ELSE 2 END
    """,
    # Each posted leg is the entry of the same number: same account, same amount.
    "entry_differs_from_its_leg": """
        SELECT l.transfer_id || ' leg ' || l.leg AS subject, e.amount - l.amount AS value
        FROM transfer_legs l
        JOIN entries e ON e.transfer_id = l.transfer_id AND e.leg = l.leg
        WHERE e.account_id <> l.account_id OR e.amount <> l.amount
    """,
    "currency_entries_do_not_sum_to_zero": """
        SELECT a.currency AS subject, sum(e.amount) AS value
        FROM entries e JOIN accounts a ON a.id = e.account_id
        GROUP BY a.currency HAVING sum(e.amount) <> 0
    """,
    "balance_differs_from_entries": """
        SELECT a.id AS subject, a.balance - coalesce(s.total, 0) AS value
        FROM accounts a
        LEFT JOIN (SELECT account_id, sum(amount) AS total FROM entries GROUP BY account_id) s
            ON s.account_id = a.id
        WHERE a.balance <> coalesce(s.total, 0)
    """,
    "balance_differs_from_last_balance_after": """
        SELECT a.id AS subject, a.balance - last.balance_after AS value
        FROM accounts a
        JOIN LATERAL (
            SELECT balance_after FROM entries WHERE account_id = a.id ORDER BY id DESC LIMIT 1
        ) last ON true
        WHERE a.balance <> last.balance_after
    """,
    "negative_balance_without_overdraft": """
        SELECT id AS subject, balance AS value
        FROM accounts WHERE balance < 0 AND NOT allow_overdraft
    """,
    # What may be spent is the balance less what active holds reserve.
    "available_negative_without_overdraft": """
        SELECT id AS subject, balance - held_out AS value
        FROM accounts WHERE balance - held_out < 0 AND NOT allow_overdraft
    """,
    "held_differs_from_active_holds": """
        SELECT a.id || ' ' || side AS subject, held - coalesce(total, 0) AS value
        FROM accounts a
        CROSS JOIN LATERAL (VALUES ('held_out', a.held_out, (
            SELECT sum(amount) FROM holds WHERE source_account_id = a.id AND status = 'active'
        )), ('held_in', a.held_in, (
            SELECT sum(amount) FROM holds
            WHERE destination_account_id = a.id AND status = 'active'
        ))) AS v(side, held, total)
        WHERE held <> coalesce(total, 0)
    """,
    # A hold is settled or released by exactly one posted action, never two; its status
    # says which, and what was captured is what that action moved.
    "hold_differs_from_its_actions": f"""
        SELECT h.id AS subject, count(a.id) AS value
        FROM holds h
        JOIN transfers ht ON ht.id = h.id
        LEFT JOIN transfers a ON a.hold_id = h.id AND a.status = 'posted'
        GROUP BY h.id, h.status, h.captured_amount, ht.status
        HAVING count(a.id) <> (CASE WHEN h.status IN {SETTLED_STATUSES} THEN 1 ELSE 0 END)
            OR h.captured_amount <> coalesce(sum(a.amount)
                   FILTER (WHERE a.kind IN ('capture', 'cashback')), 0)
            OR (h.status = 'rejected') <> (ht.status = 'rejected')
            OR (h.status = 'pending') <> (ht.status IN ('pending', 'quarantined'))
    """,
    "reversed_amount_differs_from_reversals": """
        SELECT t.id AS subject, t.reversed_amount - coalesce(r.total, 0) AS value
        FROM transfers t
        LEFT JOIN (
            SELECT reverses_id, sum(reversal_amount) AS total FROM transfers
            WHERE kind = 'reversal' AND status = 'posted' GROUP BY reverses_id
        ) r ON r.reverses_id = t.id
        WHERE t.reversed_amount <> coalesce(r.total, 0)
    """,
    "reversals_exceed_original": """
        SELECT o.id AS subject, sum(r.reversal_amount) - o.amount AS value
        FROM transfers r JOIN transfers o ON o.id = r.reverses_id
        WHERE r.kind = 'reversal' AND r.status = 'posted'
        GROUP BY o.id, o.amount HAVING sum(r.reversal_amount) > o.amount
    """,
    "transfer_pending_too_long": """
        SELECT id AS subject, extract(epoch FROM now() - created_at)::bigint AS value
        FROM transfers
        WHERE status = 'pending'
          AND created_at < now() - make_interval(secs => :pending_age_max_seconds)
    """,
    # Posting failed posting_attempts_max times (not for money): an operator must look at it,
    # then `ledger transfers release ID` once the cause is fixed.
    "transfer_quarantined": """
        SELECT id AS subject, posting_attempts AS value
        FROM transfers WHERE status = 'quarantined'
    """,
    "webhook_delivery_overdue": """
        SELECT id AS subject, extract(epoch FROM now() - next_attempt_at)::bigint AS value
        FROM webhook_deliveries
        WHERE status IN ('pending', 'failed')
          AND next_attempt_at < now() - make_interval(secs => :delivery_overdue_max_seconds)
    """,
}


class SqlBooksChecks:
    def __init__(self, connection: LazyConnection) -> None:
        self._c = connection

    def violations(
        self, *, pending_age_max_seconds: float, delivery_overdue_max_seconds: float
    ) -> dict[str, list[tuple[str, int]]]:
        """Read in one REPEATABLE READ snapshot, so that the rules agree with each other."""
        self._c.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        return run_checks(
            self._c,
            pending_age_max_seconds=pending_age_max_seconds,
            delivery_overdue_max_seconds=delivery_overdue_max_seconds,
        )


def run_checks(
    connection: LazyConnection,
    *,
    pending_age_max_seconds: float,
    delivery_overdue_max_seconds: float,
) -> dict[str, list[tuple[str, int]]]:
    """Every rule's violations as (subject, value) pairs; empty lists when the books balance."""
    params = {
        "pending_age_max_seconds": pending_age_max_seconds,
        "delivery_overdue_max_seconds": delivery_overdue_max_seconds,
    }
    results = {}
    for name, sql in CHECKS.items():
        statement = text(sql)
        bound = {k: v for k, v in params.items() if f":{k}" in sql}
        rows = connection.execute(statement, bound)
        results[name] = [(str(row.subject), int(row.value)) for row in rows]
    return results
