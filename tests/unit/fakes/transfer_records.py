"""The records the transfers repository returns, built from the rows."""

from __future__ import annotations

import copy
from datetime import datetime

from ledger_core.domain.movement_records import EntryView, TransactionRecord
from ledger_core.domain.records import TransferRecord
from ledger_core.service_layer.ports import NewTransfer

from .rows import State, TransferRow
from .schema import RESERVING_KINDS


def _accepted(transfer: NewTransfer, created_at: datetime, batch_id: str | None) -> TransferRecord:
    # What the SQL adapter builds from its arguments (not read back), metadata included.
    return TransferRecord(
        id=transfer.id,
        kind=transfer.kind,
        status="pending",
        rejection_reason=None,
        source_account_id=transfer.source_account_id,
        destination_account_id=transfer.destination_account_id,
        amount=transfer.amount,
        currency=transfer.currency,
        description=transfer.description,
        metadata=transfer.metadata,
        created_at=created_at,
        posted_at=None,
        batch_id=batch_id,
    )


def _entry_views(s: State, row: TransferRow) -> list[EntryView]:
    """sql_movements.movements: the posted entries of a movement, else its planned legs,
    else (its two accounts) the pair it would post; none for what only reserves funds."""
    posted = sorted(
        (e for e in s.entries if e.transfer_id == row.id), key=lambda e: s.entry_legs[e.id]
    )
    if posted:
        return [
            EntryView(e.account_id, e.amount, s.accounts[e.account_id].currency, e.balance_after)
            for e in posted
        ]
    if row.source_account_id is None and row.id in s.legs:
        return [
            EntryView(leg.account_id, leg.amount, s.accounts[leg.account_id].currency)
            for leg in s.legs[row.id]
        ]
    if row.kind in RESERVING_KINDS:
        return []
    assert row.source_account_id is not None and row.destination_account_id is not None
    source, destination = s.accounts[row.source_account_id], s.accounts[row.destination_account_id]
    return [
        EntryView(source.id, -row.amount, source.currency),
        EntryView(destination.id, row.amount, destination.currency),
    ]


def _movement_record(s: State, row: TransferRow) -> TransactionRecord:
    return TransactionRecord(
        id=row.id,
        kind=row.kind,
        status=row.status,
        rejection_reason=row.rejection_reason,
        rejected_account_id=row.rejected_account_id,
        entries=_entry_views(s, row),
        amount=row.amount,
        currency=row.currency,
        description=row.description,
        metadata=copy.deepcopy(row.metadata),
        effective_at=row.effective_at,
        created_at=row.created_at,
        posted_at=row.posted_at,
        batch_id=row.batch_id,
        hold_id=row.hold_id,
        reverses_id=row.reverses_id,
        reversed_amount=row.reversed_amount,
        reversed_by_ids=sorted(t.id for t in s.transfers.values() if t.reverses_id == row.id),
    )
