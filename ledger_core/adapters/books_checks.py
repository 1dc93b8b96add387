"""SQL that checks the books balance. Each query returns the rows that break one rule."""

from __future__ import annotations

from typing import Final

from sqlalchemy import text

from ledger_core.adapters.sql_connection import LazyConnection

CHECKS: Final[dict[str, str]] = {
    "transfer_entries_do_not_sum_to_zero": """
        SELECT transfer_id AS subject, sum(amount) AS value
        FROM entries GROUP BY transfer_id HAVING sum(amount) <> 0
    """,
    "posted_transfer_without_two_entries": """
        SELECT t.id AS subject, count(e.id) AS value
        FROM transfers t LEFT JOIN entries e ON e.transfer_id = t.id
        GROUP BY t.id, t.status
        HAVING (t.status = 'posted') <> (count(e.id) = 2)
            OR (t.status <> 'posted' AND count(e.id) > 0)
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
