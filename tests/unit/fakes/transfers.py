"""`FakeTransfers`: accepting, claiming and finalising transfers (with their outbox)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta

from ledger_core.adapters.sql_transfers import stale_scan_rows_max
from ledger_core.domain.ids import new_id
from ledger_core.domain.model import POSTED_OUTCOMES, Leg, OriginalState, Outcome
from ledger_core.domain.movement_records import TransactionRecord
from ledger_core.domain.records import BatchRecord, TransferRecord
from ledger_core.domain.webhooks import EVENT_TYPES, EndpointStatus, endpoint_matches, event_payload
from ledger_core.service_layer.ports import (
    BroughtEvent,
    Claim,
    ClaimedTransfer,
    KeyedRecord,
    NewBatch,
    Outbox,
    PendingWrite,
)

from .base import _Repository
from .rows import BatchRow, DeliveryRow, EventRow, State, TransferRow
from .schema import INT64_MAX, INT64_MIN, SMALLINT_MAX, _check_transfer, _in_range, _json, _require
from .transfer_records import _accepted, _movement_record


def _unit_size(s: State, head: TransferRow) -> int:
    # CLAIM_COLUMNS' unit_size: 1, the item count of the head's batch, or the members of
    # a group that has no batch (a payment with its cashback hold, a refund with its void).
    if head.group_id is None:
        return 1
    if head.batch_id is not None:
        return s.batches[head.batch_id].item_count
    return sum(t.group_id == head.id for t in s.transfers.values())


def _key_order(write: PendingWrite) -> tuple[str, bool, str]:
    return write.api_key_id, write.idempotency_key is None, write.idempotency_key or ""


class FakeTransfers(_Repository):
    table = "transfers"

    def _insert(self, row: TransferRow) -> None:
        s = self._s
        _require(row.id not in s.transfers, "pk_transfers")
        row.metadata = _json(row.metadata)
        _check_transfer(s, row)
        s.transfers[row.id] = row

    def _next_seq(self) -> int:
        # A sequence: not rolled back with the transaction.
        seq = self._store.next_seq
        self._store.next_seq += 1
        return seq

    def add_pending(self, writes: Sequence[PendingWrite]) -> dict[str, TransferRecord]:
        self._statement("add_pending")
        stored: dict[str, TransferRecord] = {}
        # ORDER BY api_key_id, key (NULLS LAST): seq follows key order within one statement,
        # so a movement comes before the keyless members stored with it; and a key met
        # twice is stored once (ON CONFLICT DO NOTHING sees the statement's own rows).
        for write in sorted(writes, key=_key_order):
            api_key_id, key, transfer = write.api_key_id, write.idempotency_key, write.transfer

            def exists(state: State, api_key_id: str = api_key_id, key: str | None = key) -> bool:
                return any(
                    t.api_key_id == api_key_id and t.idempotency_key == key
                    for t in state.transfers.values()
                )

            # The unique index is partial (WHERE idempotency_key IS NOT NULL).
            if key is not None and not self._uow.insert_unique(
                ("transfers.key", api_key_id, key), exists
            ):
                continue
            self._uow.wrote()
            # ADD_PENDING inserts no batch_id: a single movement (and the members stored
            # with it, as a payment's cashback hold) is of no batch.
            self._insert(
                TransferRow(
                    id=transfer.id,
                    seq=self._next_seq(),
                    kind=transfer.kind,
                    source_account_id=transfer.source_account_id,
                    destination_account_id=transfer.destination_account_id,
                    amount=transfer.amount,
                    currency=transfer.currency,
                    description=transfer.description,
                    metadata=transfer.metadata,
                    api_key_id=api_key_id,
                    created_at=self._now,
                    idempotency_key=key,
                    request_hash=write.request_hash,
                    shard=transfer.shard,
                    group_id=transfer.group_id,
                    hold_id=transfer.hold_id,
                    reverses_id=transfer.reverses_id,
                    reversal_amount=transfer.reversal_amount,
                    effective_at=transfer.effective_at,
                )
            )
            self._insert_legs(transfer.id, transfer.legs)
            stored[transfer.id] = _accepted(transfer, self._now, None)
        return stored

    def _insert_legs(self, transfer_id: str, legs: Sequence[Leg]) -> None:
        # ADD_LEGS: one row per leg, numbered in the order given.
        s = self._s
        for index, leg in enumerate(legs):
            _require(leg.account_id in s.accounts, "fk_transfer_legs_account_id_accounts")
            _require(_in_range(leg.amount, INT64_MIN, INT64_MAX), "transfer_legs.amount bigint")
            _require(leg.amount != 0, "ck_transfer_legs_amount_nonzero")
            _require(_in_range(index, 0, SMALLINT_MAX), "transfer_legs.leg smallint")
        if legs:
            _require(transfer_id not in s.legs, "pk_transfer_legs")
            s.legs[transfer_id] = tuple(legs)

    def add_batch(self, batch: NewBatch) -> BatchRecord | None:
        self._statement("add_batch")

        def exists(state: State) -> bool:
            return any(
                b.api_key_id == batch.api_key_id and b.idempotency_key == batch.idempotency_key
                for b in state.batches.values()
            )

        key = ("transfer_batches.key", batch.api_key_id, batch.idempotency_key)
        if not self._uow.insert_unique(key, exists):
            return None
        s = self._s
        _require(batch.id not in s.batches, "pk_transfer_batches")
        _require(batch.api_key_id in s.api_keys, "fk_transfer_batches_api_key_id_api_keys")
        _require(1 <= len(batch.items) <= 1000, "ck_transfer_batches_item_count_range")
        self._uow.wrote()
        s.batches[batch.id] = BatchRow(
            batch.id,
            batch.api_key_id,
            batch.idempotency_key,
            batch.request_hash,
            batch.atomic,
            len(batch.items),
            self._now,
        )
        for item in batch.items:  # in item order, so seq follows it
            self._insert(
                TransferRow(
                    id=item.id,
                    seq=self._next_seq(),
                    kind=item.kind,
                    source_account_id=item.source_account_id,
                    destination_account_id=item.destination_account_id,
                    amount=item.amount,
                    currency=item.currency,
                    description=item.description,
                    metadata=item.metadata,
                    api_key_id=batch.api_key_id,
                    created_at=self._now,
                    batch_id=batch.id,
                    group_id=item.group_id,
                    shard=item.shard,
                )
            )
        return BatchRecord(
            batch.id,
            batch.atomic,
            self._now,
            [_accepted(i, self._now, batch.id) for i in batch.items],
        )

    def by_idempotency_keys(
        self, keys: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], KeyedRecord]:
        s = self._statement("by_idempotency_keys")
        wanted = set(keys)
        found: dict[tuple[str, str], KeyedRecord] = {}
        for t in s.transfers.values():
            if t.idempotency_key is not None and (t.api_key_id, t.idempotency_key) in wanted:
                assert t.request_hash is not None
                found[(t.api_key_id, t.idempotency_key)] = KeyedRecord(t.request_hash, t.record())
        return found

    def batch_by_idempotency_key(self, api_key_id: str, key: str) -> KeyedRecord | None:
        s = self._statement("batch_by_idempotency_key")
        for b in s.batches.values():
            if b.api_key_id == api_key_id and b.idempotency_key == key:
                return KeyedRecord(b.request_hash, self._batch(s, b))
        return None

    def get(self, transfer_id: str) -> TransferRecord | None:
        row = self._statement("get").transfers.get(transfer_id)
        return None if row is None else row.record()

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        s = self._statement("get_batch")
        row = s.batches.get(batch_id)
        return None if row is None else self._batch(s, row)

    @staticmethod
    def _batch(s: State, row: BatchRow) -> BatchRecord:
        items = [t.record() for t in s.by_seq() if t.batch_id == row.id]
        return BatchRecord(row.id, row.atomic, row.created_at, items)

    def claim(self, *, shard: int, limit: int, only_ids: Sequence[str] | None = None) -> Claim:
        s = self._statement("claim")
        candidates = [t for t in s.by_seq() if t.claimable]
        if only_ids is None:
            candidates = [
                t
                for t in candidates
                if t.shard == shard
                and (t.posting_retry_at is None or t.posting_retry_at <= self._now)
            ]
        else:
            # CLAIM_IDS: any shard, due or not (tools, tests and bisection name transfers).
            wanted = set(only_ids)
            candidates = [t for t in candidates if t.id in wanted]
        # LIMIT ... FOR NO KEY UPDATE SKIP LOCKED: rows another transaction holds are
        # passed by, and the limit counts the rows this one gets.
        rows: list[TransferRow] = []
        for t in candidates:
            if len(rows) >= limit:
                break
            if self._uow.lock_row("transfers", t.id, skip_locked=True):
                rows.append(t)
        if not rows:
            return Claim([], now=self._now)
        kept: list[TransferRow] = []
        size = 0
        for row in rows:
            unit_size = _unit_size(s, row)
            if kept and size + unit_size > limit:
                break  # heads cut off here stay locked until this transaction ends
            kept.append(row)
            size += unit_size
        full = len(rows) >= limit or len(kept) < len(rows)
        heads = {row.id for row in kept if row.group_id is not None}
        member_ids = [
            t.id
            for t in s.by_seq()
            if t.group_id in heads and t.id != t.group_id and t.status == "pending"
        ]
        for member_id in member_ids:
            self._uow.lock_row("transfers", member_id)  # no SKIP LOCKED: only heads' holders
        s = self._s
        members: dict[str, list[ClaimedTransfer]] = {}
        for member_id in member_ids:
            member = s.transfers[member_id]
            assert member.group_id is not None
            claimed = member.claimed(s.legs.get(member.id, ()))
            members.setdefault(member.group_id, []).append(claimed)
        transfers: list[ClaimedTransfer] = []
        for row in kept:
            # CLAIM_LEGS: the legs of those with no source, in leg order.
            transfers.append(s.transfers[row.id].claimed(s.legs.get(row.id, ())))
            transfers += members.get(row.id, []) if row.group_id is not None else []
        return Claim(transfers, now=self._now, full=full)

    def finalize(
        self,
        outcomes: Sequence[Outcome],
        *,
        now: datetime,
        outbox: Outbox,
        payloads: Mapping[str, BroughtEvent] | None = None,
    ) -> list[str]:
        s = self._statement("finalize")
        brought = payloads or {}
        pending = [
            o
            for o in outcomes
            if o.transfer_id in s.transfers and s.transfers[o.transfer_id].status == "pending"
        ]
        for outcome in pending:
            self._uow.lock_row("transfers", outcome.transfer_id)
        s = self._s
        if not outcomes:
            return []
        self._uow.wrote()
        final: list[TransferRow] = []
        for outcome in pending:
            row = s.transfers[outcome.transfer_id]
            if row.status != "pending":
                continue
            if isinstance(outcome, POSTED_OUTCOMES):
                row.status, row.rejection_reason, row.posted_at = "posted", None, now
                row.rejected_account_id = None
            else:
                row.status, row.rejection_reason = "rejected", outcome.reason.value
                row.rejected_account_id, row.posted_at = outcome.account_id, None
            # clock_timestamp() in the SQL: the fake's clock.
            row.finalized_at = self._store.now()
            row.posting_retry_at = None
            _check_transfer(s, row)
            final.append(row)
        # The same statement writes the outbox, from the rows it finalized: an event per
        # transfer, a delivery per enabled endpoint that matches it.
        endpoints = [
            e.record()
            for e in sorted(s.endpoints.values(), key=lambda e: e.id)
            if e.status == EndpointStatus.ENABLED.value and e.deleted_at is None
        ]
        enqueued_until = outbox.time + timedelta(seconds=outbox.requeue_after_seconds)
        delivery_ids: list[str] = []
        for row in final:
            event = EVENT_TYPES.get((row.kind, row.status))
            _require(event is not None, "events.type NOT NULL (no event for the kind)")
            assert event is not None
            event_type = event.value
            _require(all(e.transfer_id != row.id for e in s.events.values()), "uq_events_transfer")
            pre = brought.get(row.id)
            if pre is None:  # a two-account transfer: the statement builds its payload
                event_id = new_id("evt")
                payload = event_payload(event_id, event_type, outbox.time, row.record())
                accounts = {a for a in (row.source_account_id, row.destination_account_id) if a}
            else:  # any other movement brings its own, built by the worker
                event_id, payload, accounts = pre.event_id, pre.payload, set(pre.accounts)
            _require(event_id not in s.events, "pk_events")
            s.events[event_id] = EventRow(event_id, event_type, row.id, payload, outbox.time)
            for endpoint in endpoints:
                if endpoint_matches(endpoint, event_type, accounts):
                    delivery_id = new_id("wd")
                    s.deliveries[delivery_id] = DeliveryRow(
                        delivery_id,
                        event_id,
                        endpoint.id,
                        next_attempt_at=outbox.time,
                        enqueued_until=enqueued_until,
                        created_at=outbox.time,
                    )
                    delivery_ids.append(delivery_id)
        return delivery_ids

    def lock_originals(self, transfer_ids: Collection[str]) -> dict[str, OriginalState]:
        s = self._statement("lock_originals")
        existing = [i for i in sorted(set(transfer_ids)) if i in s.transfers]
        for transfer_id in existing:
            self._uow.lock_row("transfers", transfer_id)
        s = self._s
        return {
            i: OriginalState(i, s.transfers[i].amount, s.transfers[i].reversed_amount)
            for i in existing
        }

    def reversing(self, original_id: str) -> int:
        s = self._statement("reversing")
        return sum(
            t.reversal_amount or 0
            for t in s.transfers.values()
            if t.reverses_id == original_id and t.status == "pending"
        )

    def set_reversed(self, reversed_amounts: Mapping[str, int]) -> None:
        s = self._statement("set_reversed")
        existing = [i for i in reversed_amounts if i in s.transfers]
        for transfer_id in existing:
            self._uow.lock_row("transfers", transfer_id)
        if not existing:
            return
        s = self._s
        self._uow.wrote()
        for transfer_id in existing:
            row = s.transfers[transfer_id]
            row.reversed_amount = reversed_amounts[transfer_id]
            _check_transfer(s, row)

    def movements(self, transfer_ids: Sequence[str]) -> dict[str, TransactionRecord]:
        s = self._statement("movements")
        return {i: _movement_record(s, s.transfers[i]) for i in transfer_ids if i in s.transfers}

    def get_movement(self, transfer_id: str) -> TransactionRecord | None:
        s = self._statement("get_movement")
        row = s.transfers.get(transfer_id)
        return None if row is None else _movement_record(s, row)

    def list_movements(self, *, after_id: str | None, limit: int) -> list[TransactionRecord]:
        s = self._statement("list_movements")
        # As sql_movements.list_movements: every movement, by id.
        rows = sorted(s.transfers.values(), key=lambda t: t.id)
        if after_id is not None:
            rows = [t for t in rows if t.id > after_id]
        return [_movement_record(s, t) for t in rows[:limit]]

    def record_posting_failure(
        self,
        transfer_ids: Sequence[str],
        *,
        error: str,
        attempts_max: int,
        retry_delays_seconds: Sequence[float],
    ) -> list[str]:
        s = self._statement("record_posting_failure")
        ids = [
            i
            for i in dict.fromkeys(transfer_ids)
            if i in s.transfers and s.transfers[i].status == "pending"
        ]
        for transfer_id in ids:
            self._uow.lock_row("transfers", transfer_id)
        s = self._s
        self._uow.wrote()
        delays = [float(d) for d in retry_delays_seconds]
        quarantined: list[str] = []
        for transfer_id in ids:
            row = s.transfers[transfer_id]
            attempts = row.posting_attempts + 1
            row.posting_attempts = attempts
            row.posting_error = error
            if attempts >= attempts_max:
                row.status = "quarantined"
                quarantined.append(transfer_id)
            # delays[least(attempts, cardinality)], 1-based; an empty array gives NULL.
            row.posting_retry_at = (
                self._now + timedelta(seconds=delays[min(attempts, len(delays)) - 1])
                if delays
                else None
            )
            _check_transfer(s, row)
        return quarantined

    def stale_shards(self, *, older_than: datetime) -> dict[int, int]:
        s = self._statement("stale_shards")
        # A plain SELECT: rows other transactions hold are counted too.
        stale = [
            t
            for t in s.by_seq()
            if t.claimable
            and t.created_at < older_than
            and (t.posting_retry_at is None or t.posting_retry_at <= self._now)
        ][:stale_scan_rows_max]
        counts: dict[int, int] = {}
        for t in stale:
            counts[t.shard] = counts.get(t.shard, 0) + 1
        return counts

    def release_quarantined_ids(self, transfer_id: str) -> list[str]:
        s = self._statement("release_quarantined")
        named = s.transfers.get(transfer_id)
        if named is None:
            return []
        # As RELEASE: the named transfer, and the rest of its atomic group with it.
        group_id = named.group_id
        ids = [
            row_id
            for row_id, row in s.transfers.items()
            if row.status == "quarantined"
            and (row_id == transfer_id or (group_id is not None and row.group_id == group_id))
        ]
        if not ids:
            return []
        for row_id in ids:
            self._uow.lock_row("transfers", row_id)
        self._uow.wrote()
        for row_id in ids:
            row = self._s.transfers[row_id]
            row.status, row.posting_attempts, row.posting_retry_at = "pending", 0, None
            _check_transfer(self._s, row)
        return ids
