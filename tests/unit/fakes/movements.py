"""`FakeHolds` and `FakePayments`: the rows of two-phase holds and payments."""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from datetime import datetime

from ledger_core.domain.model import HoldChange, HoldState, HoldStatus
from ledger_core.domain.movement_records import HoldRecord, PaymentRecord
from ledger_core.service_layer.ports import NewHold, NewPayment

from .base import _Repository
from .rows import HoldRow, PaymentRow
from .schema import _check_hold, _check_payment, _require


class FakeHolds(_Repository):
    table = "holds"

    def add(self, hold: NewHold) -> None:
        s = self._statement("add")
        _require(hold.id not in s.holds, "pk_holds")
        row = HoldRow(
            hold.id,
            hold.source_account_id,
            hold.destination_account_id,
            hold.amount,
            hold.currency,
            self._now,  # created_at: now(), the transaction's start
            expires_at=hold.expires_at,
            capture_at=hold.capture_at,
        )
        _check_hold(s, row)
        self._uow.wrote()
        s.holds[row.id] = row

    def get(self, hold_id: str) -> HoldRecord | None:
        row = self._statement("get").holds.get(hold_id)
        return None if row is None else row.record()

    def lock(self, hold_ids: Collection[str]) -> dict[str, HoldState]:
        # FOR NO KEY UPDATE in ascending id order: a holder makes this wait.
        existing = [i for i in sorted(set(hold_ids)) if i in self._statement("lock").holds]
        for hold_id in existing:
            self._uow.lock_row("holds", hold_id)
        s = self._s
        return {i: s.holds[i].state() for i in existing}

    def claim_action(
        self, hold_id: str, action_id: str, *, unexpired_at: datetime | None = None
    ) -> bool:
        row = self._statement("claim_action").holds.get(hold_id)
        if row is None or not row.claimable_by_action(unexpired_at):
            return False
        # An UPDATE waits for the row's holder, then re-checks its WHERE on the row as
        # that one left it: of two actions that race, the second finds the first's.
        self._uow.lock_row("holds", hold_id)
        row = self._s.holds[hold_id]
        if not row.claimable_by_action(unexpired_at):
            return False
        self._uow.wrote()
        row.action_id = action_id
        return True

    def apply(self, changes: Mapping[str, HoldChange]) -> None:
        existing = [i for i in changes if i in self._statement("apply").holds]
        for hold_id in existing:
            self._uow.lock_row("holds", hold_id)
        if not existing:
            return
        s = self._s
        self._uow.wrote()
        for hold_id in existing:
            row, change = s.holds[hold_id], changes[hold_id]
            row.status = str(change.status)  # a text column: the enum's value
            row.captured_amount += change.captured_amount
            if change.action_cleared:
                row.action_id = None
            _check_hold(s, row)

    def due(self, *, now: datetime, limit: int) -> list[tuple[HoldRecord, str, str]]:
        s = self._statement("due")
        # JOIN transfers: the API key of the hold's own movement. ORDER BY id LIMIT ...
        # SKIP LOCKED: holds another transaction holds are passed by.
        candidates = [
            h
            for h in sorted(s.holds.values(), key=lambda h: h.id)
            if h.due(now) is not None and h.id in s.transfers
        ]
        found: list[tuple[HoldRecord, str, str]] = []
        for hold in candidates:
            if len(found) >= limit:
                break
            if self._uow.lock_row("holds", hold.id, skip_locked=True):
                what = hold.due(now)
                assert what is not None
                found.append((hold.record(), what, s.transfers[hold.id].api_key_id))
        return found


def _cashback_status(payment: PaymentRow, status: str, hold: HoldRow | None) -> str:
    # sql_movements._cashback_status, on the joined rows.
    if not payment.cashback_amount:
        return "none"
    hold_status = None if hold is None else hold.status
    if status == "rejected" or hold_status == HoldStatus.REJECTED.value:
        return "rejected"
    if payment.cashback_hold_id is None:
        return "posted" if status == "posted" else "pending"
    return {"captured": "posted", "voided": "voided"}.get(hold_status or "", "pending")


class FakePayments(_Repository):
    table = "payments"

    def add(self, payment: NewPayment) -> None:
        s = self._statement("add")
        _require(payment.id not in s.payments, "pk_payments")
        row = PaymentRow(
            payment.id,
            payment.customer_account_id,
            payment.merchant_account_id,
            payment.amount,
            payment.rewards_account_id,
            payment.basis_points,
            payment.cashback_amount,
            payment.cashback_hold_id,
        )
        _check_payment(s, row)
        self._uow.wrote()
        s.payments[row.id] = row

    def get(self, payment_id: str) -> PaymentRecord | None:
        s = self._statement("get")
        row = s.payments.get(payment_id)
        transfer = s.transfers.get(payment_id)
        if row is None or transfer is None:  # JOIN transfers
            return None
        assert transfer.currency is not None, "a payment has the currency of its accounts"
        hold = None if row.cashback_hold_id is None else s.holds.get(row.cashback_hold_id)
        return PaymentRecord(
            id=row.id,
            status=transfer.status,
            rejection_reason=transfer.rejection_reason,
            customer_account_id=row.customer_account_id,
            merchant_account_id=row.merchant_account_id,
            amount=row.amount,
            currency=transfer.currency,
            rewards_account_id=row.rewards_account_id,
            basis_points=row.basis_points,
            cashback_amount=row.cashback_amount,
            cashback_hold_id=row.cashback_hold_id,
            cashback_status=_cashback_status(row, transfer.status, hold),
            description=transfer.description,
            metadata=copy.deepcopy(transfer.metadata),
            created_at=transfer.created_at,
            posted_at=transfer.posted_at,
            reversed_amount=transfer.reversed_amount,
        )
