"""PostgreSQL repositories of holds and payments, and the reads of any movement as a
transaction with its entries (planned while pending, with balances once posted)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from ledger_core.adapters.sql_connection import LazyConnection
from ledger_core.domain.model import HoldChange, HoldState, OriginalState, TransferKind
from ledger_core.domain.movement_records import (
    EntryView,
    HoldRecord,
    PaymentRecord,
    TransactionRecord,
)
from ledger_core.service_layer.ports import NewHold, NewPayment

HOLD_COLUMNS = """
    id, status, source_account_id, destination_account_id, amount, captured_amount, currency,
    action_id, expires_at, capture_at, created_at
"""
ADD_HOLD = """
    INSERT INTO holds (id, source_account_id, destination_account_id, amount, currency,
                       expires_at, capture_at)
    VALUES (%(id)s, %(source)s, %(destination)s, %(amount)s, %(currency)s, %(expires_at)s,
            %(capture_at)s)
"""
GET_HOLD = f"SELECT {HOLD_COLUMNS} FROM holds WHERE id = %(id)s"
LOCK_HOLDS = """
    SELECT id, status, amount, source_account_id, destination_account_id, action_id
    FROM holds WHERE id = ANY(%(ids)b::text[]) ORDER BY id FOR NO KEY UPDATE
"""
# One UPDATE decides between a capture, a void and an expiry that race for a hold.
CLAIM_ACTION = """
    UPDATE holds SET action_id = %(action)s
    WHERE id = %(id)s AND status = 'active' AND action_id IS NULL
      AND (%(unexpired_at)s::timestamptz IS NULL OR expires_at IS NULL
           OR expires_at > %(unexpired_at)s::timestamptz)
    RETURNING id
"""
APPLY_HOLDS = """
    UPDATE holds AS h
    SET status = v.status, captured_amount = h.captured_amount + v.captured,
        action_id = CASE WHEN v.cleared THEN NULL ELSE h.action_id END
    FROM unnest(%(ids)b::text[], %(statuses)b::text[], %(captured)b::bigint[],
                %(cleared)b::bool[]) AS v(id, status, captured, cleared)
    WHERE h.id = v.id
"""
# The API key that created the hold is also the one its expiry or cashback is made under.
DUE_HOLDS = """
    SELECT h.id, h.status, h.source_account_id, h.destination_account_id, h.amount,
           h.captured_amount, h.currency, h.action_id, h.expires_at, h.capture_at,
           h.created_at, t.api_key_id,
           CASE WHEN h.capture_at IS NOT NULL AND h.capture_at <= %(now)s THEN 'cashback'
                ELSE 'expire' END AS due
    FROM holds h JOIN transfers t ON t.id = h.id
    WHERE h.status = 'active' AND h.action_id IS NULL
      AND ((h.expires_at IS NOT NULL AND h.expires_at <= %(now)s)
           OR (h.capture_at IS NOT NULL AND h.capture_at <= %(now)s))
    ORDER BY h.id LIMIT %(limit)s
    FOR NO KEY UPDATE OF h SKIP LOCKED
"""

ADD_PAYMENT = """
    INSERT INTO payments (id, customer_account_id, merchant_account_id, amount,
                          rewards_account_id, basis_points, cashback_amount, cashback_hold_id)
    VALUES (%(id)s, %(customer)s, %(merchant)s, %(amount)s, %(rewards)s, %(basis_points)s,
            %(cashback)s, %(hold_id)s)
"""
GET_PAYMENT = """
    SELECT p.*, t.status, t.rejection_reason, t.currency, t.description, t.metadata,
           t.created_at, t.posted_at, t.reversed_amount, h.status AS hold_status
    FROM payments p JOIN transfers t ON t.id = p.id
    LEFT JOIN holds h ON h.id = p.cashback_hold_id
    WHERE p.id = %(id)s
"""

LOCK_ORIGINALS = """
    SELECT id, amount, reversed_amount FROM transfers
    WHERE id = ANY(%(ids)b::text[]) ORDER BY id FOR NO KEY UPDATE
"""
REVERSING = """
    SELECT coalesce(sum(reversal_amount), 0) FROM transfers
    WHERE reverses_id = %(id)s AND status = 'pending'
"""
SET_REVERSED = """
    UPDATE transfers AS t SET reversed_amount = v.reversed
    FROM unnest(%(ids)b::text[], %(reversed)b::bigint[]) AS v(id, reversed)
    WHERE t.id = v.id
"""

# What only reserves or releases funds: never an entry.
RESERVING_KINDS = frozenset(
    {TransferKind.HOLD.value, TransferKind.VOID.value, TransferKind.EXPIRE.value}
)
MOVEMENT_COLUMNS = """
    t.id, t.kind, t.status, t.rejection_reason, t.source_account_id, t.destination_account_id,
    t.amount, t.currency, t.description, t.metadata, t.effective_at, t.created_at,
    t.posted_at, t.batch_id, t.hold_id, t.reverses_id, t.reversed_amount,
    t.rejected_account_id
"""
GET_MOVEMENT = f"SELECT {MOVEMENT_COLUMNS} FROM transfers t WHERE t.id = %(id)s"
GET_MOVEMENTS = f"SELECT {MOVEMENT_COLUMNS} FROM transfers t WHERE t.id = ANY(%(ids)b::text[])"
FIRST_MOVEMENTS = f"SELECT {MOVEMENT_COLUMNS} FROM transfers t ORDER BY t.id LIMIT %(limit)s"
NEXT_MOVEMENTS = f"""
    SELECT {MOVEMENT_COLUMNS} FROM transfers t WHERE t.id > %(after)s ORDER BY t.id
    LIMIT %(limit)s
"""
MOVEMENT_LEGS = """
    SELECT l.transfer_id, l.leg, l.account_id, l.amount, a.currency
    FROM transfer_legs l JOIN accounts a ON a.id = l.account_id
    WHERE l.transfer_id = ANY(%(ids)b::text[])
"""
MOVEMENT_ENTRIES = """
    SELECT e.transfer_id, e.leg, e.account_id, e.amount, a.currency, e.balance_after
    FROM entries e JOIN accounts a ON a.id = e.account_id
    WHERE e.transfer_id = ANY(%(ids)b::text[])
"""
ACCOUNT_CURRENCIES = "SELECT id, currency FROM accounts WHERE id = ANY(%(ids)b::text[])"
REVERSED_BY = """
    SELECT reverses_id, id FROM transfers WHERE reverses_id = ANY(%(ids)b::text[]) ORDER BY id
"""


def _hold(row: Any) -> HoldRecord:
    return HoldRecord(
        id=row.id,
        status=row.status,
        source_account_id=row.source_account_id,
        destination_account_id=row.destination_account_id,
        amount=row.amount,
        captured_amount=row.captured_amount,
        currency=row.currency,
        action_id=row.action_id,
        expires_at=row.expires_at,
        capture_at=row.capture_at,
        created_at=row.created_at,
    )


class SqlHoldRepository:
    def __init__(self, connection: LazyConnection) -> None:
        self._c = connection

    def add(self, hold: NewHold) -> None:
        self._c.exec_driver_sql(
            ADD_HOLD,
            {
                "id": hold.id,
                "source": hold.source_account_id,
                "destination": hold.destination_account_id,
                "amount": hold.amount,
                "currency": hold.currency,
                "expires_at": hold.expires_at,
                "capture_at": hold.capture_at,
            },
        )

    def get(self, hold_id: str) -> HoldRecord | None:
        row = self._c.exec_driver_sql(GET_HOLD, {"id": hold_id}).first()
        return None if row is None else _hold(row)

    def lock(self, hold_ids: Collection[str]) -> dict[str, HoldState]:
        rows = self._c.driver_rows(LOCK_HOLDS, {"ids": sorted(hold_ids)})
        return {row[0]: HoldState(*row) for row in rows}

    def claim_action(
        self, hold_id: str, action_id: str, *, unexpired_at: datetime | None = None
    ) -> bool:
        claimed = self._c.exec_driver_sql(
            CLAIM_ACTION, {"id": hold_id, "action": action_id, "unexpired_at": unexpired_at}
        )
        return claimed.first() is not None

    def apply(self, changes: Mapping[str, HoldChange]) -> None:
        if not changes:
            return
        self._c.exec_driver_sql(
            APPLY_HOLDS,
            {
                "ids": list(changes),
                "statuses": [c.status for c in changes.values()],
                "captured": [c.captured_amount for c in changes.values()],
                "cleared": [c.action_cleared for c in changes.values()],
            },
        )

    def due(self, *, now: datetime, limit: int) -> list[tuple[HoldRecord, str, str]]:
        rows = self._c.exec_driver_sql(DUE_HOLDS, {"now": now, "limit": limit})
        return [(_hold(row), row.due, row.api_key_id) for row in rows]


class SqlPaymentRepository:
    def __init__(self, connection: LazyConnection) -> None:
        self._c = connection

    def add(self, payment: NewPayment) -> None:
        self._c.exec_driver_sql(
            ADD_PAYMENT,
            {
                "id": payment.id,
                "customer": payment.customer_account_id,
                "merchant": payment.merchant_account_id,
                "amount": payment.amount,
                "rewards": payment.rewards_account_id,
                "basis_points": payment.basis_points,
                "cashback": payment.cashback_amount,
                "hold_id": payment.cashback_hold_id,
            },
        )

    def get(self, payment_id: str) -> PaymentRecord | None:
        row = self._c.exec_driver_sql(GET_PAYMENT, {"id": payment_id}).first()
        if row is None:
            return None
        return PaymentRecord(
            id=row.id,
            status=row.status,
            rejection_reason=row.rejection_reason,
            customer_account_id=row.customer_account_id,
            merchant_account_id=row.merchant_account_id,
            amount=row.amount,
            currency=row.currency,
            rewards_account_id=row.rewards_account_id,
            basis_points=row.basis_points,
            cashback_amount=row.cashback_amount,
            cashback_hold_id=row.cashback_hold_id,
            cashback_status=_cashback_status(row),
            description=row.description,
            metadata=row.metadata,
            created_at=row.created_at,
            posted_at=row.posted_at,
            reversed_amount=row.reversed_amount,
        )


def _cashback_status(row: Any) -> str:
    """none, pending (with the payment, or waiting for its delay), posted, rejected, or
    voided (the payment was refunded before its delayed cashback was paid)."""
    if not row.cashback_amount:
        return "none"
    if row.status == "rejected" or row.hold_status == "rejected":
        return "rejected"
    if row.cashback_hold_id is None:
        return "posted" if row.status == "posted" else "pending"
    return {"captured": "posted", "voided": "voided"}.get(row.hold_status, "pending")


def lock_originals(c: LazyConnection, transfer_ids: Collection[str]) -> dict[str, OriginalState]:
    rows = c.driver_rows(LOCK_ORIGINALS, {"ids": sorted(transfer_ids)})
    return {row[0]: OriginalState(*row) for row in rows}


def reversing(c: LazyConnection, original_id: str) -> int:
    return int(c.exec_driver_sql(REVERSING, {"id": original_id}).scalar_one())


def set_reversed(c: LazyConnection, reversed_amounts: Mapping[str, int]) -> None:
    if reversed_amounts:
        c.exec_driver_sql(
            SET_REVERSED,
            {"ids": list(reversed_amounts), "reversed": list(reversed_amounts.values())},
        )


def get_movement(c: LazyConnection, transfer_id: str) -> TransactionRecord | None:
    row = c.exec_driver_sql(GET_MOVEMENT, {"id": transfer_id}).first()
    return None if row is None else movements(c, [row])[0]


def movements_by_id(c: LazyConnection, transfer_ids: Sequence[str]) -> dict[str, TransactionRecord]:
    rows = c.exec_driver_sql(GET_MOVEMENTS, {"ids": list(transfer_ids)}).all()
    return {record.id: record for record in movements(c, rows)}


def list_movements(
    c: LazyConnection, *, after_id: str | None, limit: int
) -> list[TransactionRecord]:
    if after_id is None:
        rows = c.exec_driver_sql(FIRST_MOVEMENTS, {"limit": limit}).all()
    else:
        rows = c.exec_driver_sql(NEXT_MOVEMENTS, {"after": after_id, "limit": limit}).all()
    return movements(c, rows)


def movements(c: LazyConnection, rows: list[Any]) -> list[TransactionRecord]:
    """Movements with their entries: posted entries for those that posted them, the
    planned legs otherwise; a few queries for the whole page, none per row."""
    ids = [row.id for row in rows]
    if not ids:
        return []
    posted: dict[str, list[tuple[int, EntryView]]] = {}
    for transfer_id, leg, account_id, amount, currency, after in c.driver_rows(
        MOVEMENT_ENTRIES, {"ids": ids}
    ):
        posted.setdefault(transfer_id, []).append(
            (leg, EntryView(account_id, amount, currency, int(after)))
        )
    legs: dict[str, list[tuple[int, EntryView]]] = {}
    legged = [row.id for row in rows if row.source_account_id is None]
    if legged:
        for transfer_id, leg, account_id, amount, currency in c.driver_rows(
            MOVEMENT_LEGS, {"ids": legged}
        ):
            legs.setdefault(transfer_id, []).append((leg, EntryView(account_id, amount, currency)))
    accounts = {a for row in rows for a in (row.source_account_id, row.destination_account_id) if a}
    currencies = dict(c.driver_rows(ACCOUNT_CURRENCIES, {"ids": sorted(accounts)}))
    reversed_by: dict[str, list[str]] = {}
    for original, reversal in c.driver_rows(REVERSED_BY, {"ids": ids}):
        reversed_by.setdefault(original, []).append(reversal)
    records = []
    for row in rows:
        if row.id in posted:
            views = [view for _, view in sorted(posted[row.id], key=lambda pair: pair[0])]
        elif row.id in legs:
            views = [view for _, view in sorted(legs[row.id], key=lambda pair: pair[0])]
        elif row.kind in RESERVING_KINDS:
            views = []  # it reserves or releases (see the hold); it posts no entry
        else:
            views = [
                EntryView(row.source_account_id, -row.amount, currencies[row.source_account_id]),
                EntryView(
                    row.destination_account_id,
                    row.amount,
                    currencies[row.destination_account_id],
                ),
            ]
        records.append(
            TransactionRecord(
                id=row.id,
                kind=row.kind,
                status=row.status,
                rejection_reason=row.rejection_reason,
                rejected_account_id=row.rejected_account_id,
                entries=views,
                amount=row.amount,
                currency=row.currency,
                description=row.description,
                metadata=row.metadata,
                effective_at=row.effective_at,
                created_at=row.created_at,
                posted_at=row.posted_at,
                batch_id=row.batch_id,
                hold_id=row.hold_id,
                reverses_id=row.reverses_id,
                reversed_amount=row.reversed_amount,
                reversed_by_ids=reversed_by.get(row.id, []),
            )
        )
    return records
