"""PostgreSQL repositories of transfers (accepting, claiming, finalising) and entries.

Posting writes each kind of row with one set-based statement per batch (`unnest` of
arrays), whatever the batch size: the cost per transfer falls as batches grow.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

from ledger_core.adapters import sql_movements
from ledger_core.adapters.sql_connection import LazyConnection
from ledger_core.domain.model import (
    POSTED_OUTCOMES,
    Leg,
    OriginalState,
    Outcome,
    Posted,
    Rejected,
)
from ledger_core.domain.movement_records import TransactionRecord
from ledger_core.domain.records import BatchRecord, EntryRecord, TransferRecord
from ledger_core.domain.webhooks import EVENT_TYPES
from ledger_core.service_layer.ports import (
    BroughtEvent,
    Claim,
    ClaimedTransfer,
    KeyedRecord,
    NewBatch,
    NewTransfer,
    Outbox,
    PendingWrite,
)

# The sweeper counts at most this many stale transfers per run: it only needs to know
# which shards to wake, not how deep their backlog is.
stale_scan_rows_max = 10_000

COLUMNS = """
    t.id, t.kind, t.status, t.rejection_reason, t.source_account_id, t.destination_account_id,
    t.amount, t.currency, t.description, t.metadata, t.batch_id, t.created_at, t.posted_at
"""
# Ordered by key: two transactions that store overlapping keys take their locks on the
# unique index in one order, so they wait for each other instead of deadlocking.
ADD_PENDING = """
    INSERT INTO transfers (id, kind, source_account_id, destination_account_id, amount,
                           currency, description, metadata, api_key_id, idempotency_key,
                           request_hash, shard, group_id, hold_id, reverses_id,
                           reversal_amount, effective_at)
    SELECT id, kind, source, destination, amount, currency, description, metadata,
           api_key_id, key, request_hash, shard, group_id, hold_id, reverses_id,
           reversal_amount, effective_at
    FROM unnest(%(ids)b::text[], %(kinds)b::text[], %(sources)b::text[],
                %(destinations)b::text[], %(amounts)b::bigint[], %(currencies)b::text[],
                %(descriptions)b::text[], %(metadata)b::jsonb[], %(api_key_ids)b::text[],
                %(keys)b::text[], %(hashes)b::text[], %(shards)b::smallint[],
                %(group_ids)b::text[], %(hold_ids)b::text[], %(reverses_ids)b::text[],
                %(reversal_amounts)b::bigint[], %(effective_ats)b::timestamptz[])
         AS u(id, kind, source, destination, amount, currency, description, metadata,
              api_key_id, key, request_hash, shard, group_id, hold_id, reverses_id,
              reversal_amount, effective_at)
    ORDER BY api_key_id, key
    ON CONFLICT (api_key_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, created_at
"""
ADD_LEGS = """
    INSERT INTO transfer_legs (transfer_id, leg, account_id, amount)
    SELECT * FROM unnest(%(transfer_ids)b::text[], %(legs)b::smallint[],
                         %(account_ids)b::text[], %(amounts)b::bigint[])
"""
BY_KEYS = f"""
    SELECT {COLUMNS}, t.request_hash, t.api_key_id, t.idempotency_key FROM transfers t
    JOIN unnest(%(api_key_ids)b::text[], %(keys)b::text[]) AS k(api_key_id, key)
      ON t.api_key_id = k.api_key_id AND t.idempotency_key = k.key
"""
GET = f"SELECT {COLUMNS} FROM transfers t WHERE t.id = %(id)s"

ADD_BATCH = """
    INSERT INTO transfer_batches (id, api_key_id, idempotency_key, request_hash, atomic,
                                  item_count)
    VALUES (%(id)s, %(api_key_id)s, %(key)s, %(request_hash)s, %(atomic)s, %(count)s)
    ON CONFLICT (api_key_id, idempotency_key) DO NOTHING
    RETURNING created_at
"""
# ORDER BY the array position: identity values, hence acceptance order, follow item order.
ADD_BATCH_ITEMS = """
    INSERT INTO transfers (id, kind, source_account_id, destination_account_id, amount,
                           currency, description, metadata, api_key_id, batch_id, group_id,
                           shard)
    SELECT id, kind, source, destination, amount, currency, description, metadata,
           %(api_key_id)s, %(batch_id)s, group_id, shard
    FROM unnest(%(ids)b::text[], %(kinds)b::text[], %(sources)b::text[],
                %(destinations)b::text[], %(amounts)b::bigint[], %(currencies)b::text[],
                %(descriptions)b::text[], %(metadata)b::jsonb[], %(group_ids)b::text[],
                %(shards)b::smallint[])
         WITH ORDINALITY AS u(id, kind, source, destination, amount, currency, description,
                              metadata, group_id, shard, position)
    ORDER BY position
"""
BATCH_BY_KEY = """
    SELECT id, atomic, created_at, request_hash FROM transfer_batches
    WHERE api_key_id = %(api_key_id)s AND idempotency_key = %(key)s
"""
BATCH_BY_ID = "SELECT id, atomic, created_at FROM transfer_batches WHERE id = %(id)s"
BATCH_ITEMS = f"SELECT {COLUMNS} FROM transfers t WHERE t.batch_id = %(id)s ORDER BY t.seq"

CLAIM_COLUMNS = """
    t.id, t.source_account_id, t.destination_account_id, t.amount, t.created_at, t.group_id,
    t.kind, t.hold_id, t.reverses_id, t.reversal_amount,
    -- An atomic group is a batch's (its item count) or a payment with its cashback hold
    -- (no batch: its members are counted).
    CASE WHEN t.group_id IS NULL THEN 1
         WHEN t.batch_id IS NOT NULL
             THEN (SELECT b.item_count FROM transfer_batches b WHERE b.id = t.batch_id)
         ELSE (SELECT count(*) FROM transfers g WHERE g.group_id = t.id) END
        AS unit_size,
    now() AS now
"""
# The WHERE clause repeats ix_transfers_claimable's predicate, so the index serves it.
# SKIP LOCKED: concurrent postings take disjoint sets instead of queueing on each other.
CLAIM = f"""
    SELECT {CLAIM_COLUMNS} FROM transfers t
    WHERE t.status = 'pending' AND (t.group_id IS NULL OR t.group_id = t.id)
      AND t.shard = %(shard)s
      AND (t.posting_retry_at IS NULL OR t.posting_retry_at <= now())
    ORDER BY t.seq
    LIMIT %(limit)s
    FOR NO KEY UPDATE OF t SKIP LOCKED
"""
CLAIM_IDS = f"""
    SELECT {CLAIM_COLUMNS} FROM transfers t
    WHERE t.status = 'pending' AND (t.group_id IS NULL OR t.group_id = t.id)
      AND t.id = ANY(%(ids)b::text[])
    ORDER BY t.seq
    LIMIT %(limit)s
    FOR NO KEY UPDATE OF t SKIP LOCKED
"""
# Only the holder of a group's head ever locks its members, so this never waits long.
CLAIM_MEMBERS = """
    SELECT t.id, t.source_account_id, t.destination_account_id, t.amount, t.created_at,
           t.group_id, t.kind, t.hold_id, t.reverses_id, t.reversal_amount
    FROM transfers t
    WHERE t.group_id = ANY(%(heads)b::text[]) AND t.id <> t.group_id AND t.status = 'pending'
    ORDER BY t.seq
    FOR NO KEY UPDATE OF t
"""
CLAIM_LEGS = """
    SELECT transfer_id, account_id, amount FROM transfer_legs
    WHERE transfer_id = ANY(%(ids)b::text[]) ORDER BY transfer_id, leg
"""
# Text and numbers of a batch travel as one comma-separated string each (split by
# string_to_array on the server), not as arrays of a thousand parameters: the ids and
# amounts hold no comma, and a join costs far less than dumping array elements one by one.
#
# One statement writes the final statuses and the webhook outbox: an event per transfer,
# its payload built from the final row (the reference is domain.webhooks.event_payload),
# and a delivery per enabled endpoint that matches it (domain.webhooks.endpoint_matches).
ISO_UTC = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
# Ids as domain.ids.new_id makes them: prefix, milliseconds in 12 hex digits, 64 random
# bits. random(), not gen_random_uuid(): these ids need to be unique, not unguessable (the
# primary key refuses a collision, and the batch is then retried), and random() costs a
# tenth. The statement's timestamp: every id of a batch shares it.
NEW_ID = (
    "{} || '_'"
    " || lpad(to_hex((extract(epoch FROM statement_timestamp()) * 1000)::bigint), 12, '0')"
    # floor, not a cast, which rounds: 2^32 itself would be nine hex digits.
    " || lpad(to_hex(floor(random() * 4294967296)::bigint), 8, '0')"
    " || lpad(to_hex(floor(random() * 4294967296)::bigint), 8, '0')"
)
# The event type of each (kind, status), from the domain's table: one source of truth.
EVENT_TYPE = (
    "CASE "
    + " ".join(
        f"WHEN f.kind = '{kind}' AND f.status = '{status}' THEN '{event.value}'"
        for (kind, status), event in EVENT_TYPES.items()
    )
    + " END"
)
FINALIZE = f"""
    WITH final AS (
        UPDATE transfers AS t
        SET status = v.status, rejection_reason = nullif(v.reason, ''),
            rejected_account_id = nullif(v.account, ''),
            posted_at = CASE WHEN v.status = 'posted' THEN %(now)s::timestamptz END,
            -- The clock, not the transaction's start: accepted-to-final latency includes
            -- the posting itself.
            finalized_at = clock_timestamp(), posting_retry_at = NULL
        FROM unnest(string_to_array(%(ids)s, ','), string_to_array(%(statuses)s, ','),
                    string_to_array(%(reasons)s, ','),
                    string_to_array(%(rejected_accounts)s, ','))
             AS v(id, status, reason, account)
        WHERE t.id = v.id AND t.status = 'pending'
        RETURNING t.*
    ), brought AS (
        -- Movements other than two-account transfers bring their event id, payload and
        -- accounts, built by the worker (movement_records.TransactionRecord and friends).
        SELECT * FROM unnest(%(pre_ids)b::text[], %(pre_event_ids)b::text[],
                             %(pre_payloads)b::text[], %(pre_accounts)b::text[])
               AS b(transfer_id, event_id, payload, accounts)
    ), new_events AS MATERIALIZED (
        -- Materialized: each row draws its id once (a volatile function in a lateral or a
        -- flattened subquery may be drawn once for all rows, or once per reference).
        SELECT coalesce(b.event_id, {NEW_ID.format("'evt'")}) AS event_id,
               {EVENT_TYPE} AS type, b.payload AS brought_payload,
               coalesce(string_to_array(b.accounts, ','),
                        ARRAY[f.source_account_id, f.destination_account_id]) AS accounts,
               f.id AS transfer_id, f.kind, f.status, f.rejection_reason,
               f.source_account_id, f.destination_account_id, f.amount, f.currency,
               f.description, f.metadata, f.batch_id, f.created_at, f.posted_at
        FROM final f LEFT JOIN brought b ON b.transfer_id = f.id
    ), written AS (
        INSERT INTO events (id, type, transfer_id, payload, created_at)
        SELECT e.event_id, e.type, e.transfer_id,
               coalesce(e.brought_payload, json_build_object(
                   'id', e.event_id, 'type', e.type,
                   'timestamp', {ISO_UTC.format("%(outbox_time)s::timestamptz")},
                   'data', json_build_object(
                       'id', e.transfer_id, 'object', 'transfer', 'kind', e.kind,
                       'status', e.status, 'rejection_reason', e.rejection_reason,
                       'source_account_id', e.source_account_id,
                       'destination_account_id', e.destination_account_id,
                       'amount', e.amount, 'currency', e.currency,
                       'description', e.description, 'metadata', e.metadata,
                       'batch_id', e.batch_id,
                       'created_at', {ISO_UTC.format("e.created_at")},
                       'posted_at', {ISO_UTC.format("e.posted_at")}))::text),
               %(outbox_time)s
        FROM new_events e
        RETURNING id, type, transfer_id
    ), deliveries AS (
        -- From new_events, not by joining `written` back to `final`: a join of two CTEs
        -- has no statistics, and the planner's nested loop over them was quadratic.
        INSERT INTO webhook_deliveries (id, event_id, endpoint_id, next_attempt_at,
                                        enqueued_until, created_at)
        SELECT {NEW_ID.format("'wd'")}, e.event_id, ep.id, %(outbox_time)s,
               %(outbox_time)s::timestamptz + make_interval(secs => %(requeue_seconds)s),
               %(outbox_time)s
        FROM new_events e
        JOIN webhook_endpoints ep
          ON ep.status = 'enabled' AND ep.deleted_at IS NULL AND ep.events ? e.type
         -- "every account" is stored as a JSON null (the JSONB column type's None)
         AND (ep.account_ids IS NULL OR jsonb_typeof(ep.account_ids) = 'null'
              OR ep.account_ids ?| e.accounts)
        RETURNING id
    )
    SELECT id FROM deliveries
"""
RECORD_FAILURE = """
    UPDATE transfers
    SET posting_attempts = posting_attempts + 1,
        posting_error = %(error)s,
        status = CASE WHEN posting_attempts + 1 >= %(attempts_max)s THEN 'quarantined'
                      ELSE status END,
        posting_retry_at = now() + make_interval(secs => (%(delays)b::float8[])[
            least(posting_attempts + 1, cardinality(%(delays)b::float8[]))])
    WHERE id = ANY(%(ids)b::text[]) AND status = 'pending'
    RETURNING id, status
"""
STALE_SHARDS = """
    SELECT shard, count(*) AS stale FROM (
        SELECT shard FROM transfers
        WHERE status = 'pending' AND (group_id IS NULL OR group_id = id)
          AND created_at < %(older_than)s
          AND (posting_retry_at IS NULL OR posting_retry_at <= now())
        LIMIT %(rows_max)s
    ) s GROUP BY shard
"""
# A transfer of an atomic batch goes back with its whole group, or the group would post
# in part (a head alone) or never (a member alone: only heads are claimed).
RELEASE = """
    UPDATE transfers SET status = 'pending', posting_attempts = 0, posting_retry_at = NULL
    WHERE status = 'quarantined'
      AND (id = %(id)s
           OR group_id = (SELECT group_id FROM transfers WHERE id = %(id)s
                          AND group_id IS NOT NULL))
    RETURNING id
"""

ADD_ENTRIES = """
    INSERT INTO entries (transfer_id, account_id, amount, balance_after, leg)
    SELECT transfer_id, account_id, amount::bigint, balance_after::numeric, leg::smallint
    FROM unnest(string_to_array(%(transfer_ids)s, ','), string_to_array(%(account_ids)s, ','),
                string_to_array(%(amounts)s, ','), string_to_array(%(balances)s, ','),
                string_to_array(%(legs)s, ','))
         WITH ORDINALITY AS u(transfer_id, account_id, amount, balance_after, leg, position)
    ORDER BY position
"""
ENTRY_COLUMNS = "id, transfer_id, account_id, amount, balance_after, created_at"
# Ordered by what the cursor pages by: id, the posting order. Entries since 0006 have
# their insert's clock, so id order is time order, but older ones carry their posting
# transaction's start, which can run against id order (tests/integration/
# test_entries_paging.py). The (account_id, id) index serves the cursor; the window
# filters it.
ENTRIES_PAGE = f"""
    SELECT {ENTRY_COLUMNS} FROM entries
    WHERE account_id = %(account_id)s AND id > %(after)s
      AND created_at > %(created_after)s AND created_at < %(created_before)s
    ORDER BY id LIMIT %(limit)s
"""
FAR_PAST = datetime(1, 1, 2, tzinfo=UTC)
FAR_FUTURE = datetime(9999, 12, 30, tzinfo=UTC)


def transfer_record(row: Any) -> TransferRecord:
    return TransferRecord(
        id=row.id,
        kind=row.kind,
        status=row.status,
        rejection_reason=row.rejection_reason,
        source_account_id=row.source_account_id,
        destination_account_id=row.destination_account_id,
        amount=row.amount,
        currency=row.currency,
        description=row.description,
        metadata=row.metadata,
        created_at=row.created_at,
        posted_at=row.posted_at,
        batch_id=row.batch_id,
    )


def _claimed(row: tuple[Any, ...]) -> ClaimedTransfer:
    transfer_id, source, destination, amount, created_at, group_id = row[:6]
    kind, hold_id, reverses_id, reversal_amount = row[6:10]
    return ClaimedTransfer(
        transfer_id,
        source,
        destination,
        amount,
        group_id,
        created_at,
        kind,
        hold_id,
        reverses_id,
        reversal_amount or 0,
    )


def _accepted(transfer: NewTransfer, created_at: datetime, batch_id: str | None) -> TransferRecord:
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


class SqlTransferRepository:
    def __init__(self, connection: LazyConnection) -> None:
        self._c = connection

    def add_pending(self, writes: Sequence[PendingWrite]) -> dict[str, TransferRecord]:
        if not writes:
            return {}
        transfers = [w.transfer for w in writes]
        rows = self._c.exec_driver_sql(
            ADD_PENDING,
            {
                "ids": [t.id for t in transfers],
                "kinds": [t.kind for t in transfers],
                "sources": [t.source_account_id for t in transfers],
                "destinations": [t.destination_account_id for t in transfers],
                "amounts": [t.amount for t in transfers],
                "currencies": [t.currency for t in transfers],
                "descriptions": [t.description for t in transfers],
                "metadata": [Jsonb(t.metadata) for t in transfers],
                "api_key_ids": [w.api_key_id for w in writes],
                "keys": [w.idempotency_key for w in writes],
                "hashes": [w.request_hash for w in writes],
                "shards": [t.shard for t in transfers],
                "group_ids": [t.group_id for t in transfers],
                "hold_ids": [t.hold_id for t in transfers],
                "reverses_ids": [t.reverses_id for t in transfers],
                "reversal_amounts": [t.reversal_amount for t in transfers],
                "effective_ats": [t.effective_at for t in transfers],
            },
        )
        created_at = {row.id: row.created_at for row in rows}
        legged = [t for t in transfers if t.legs and t.id in created_at]
        if legged:  # not on the path of plain transfers: no round trip for them
            self._c.exec_driver_sql(
                ADD_LEGS,
                {
                    "transfer_ids": [t.id for t in legged for _ in t.legs],
                    "legs": [i for t in legged for i in range(len(t.legs))],
                    "account_ids": [leg.account_id for t in legged for leg in t.legs],
                    "amounts": [leg.amount for t in legged for leg in t.legs],
                },
            )
        return {t.id: _accepted(t, created_at[t.id], None) for t in transfers if t.id in created_at}

    def add_batch(self, batch: NewBatch) -> BatchRecord | None:
        created_at = self._c.exec_driver_sql(
            ADD_BATCH,
            {
                "id": batch.id,
                "api_key_id": batch.api_key_id,
                "key": batch.idempotency_key,
                "request_hash": batch.request_hash,
                "atomic": batch.atomic,
                "count": len(batch.items),
            },
        ).scalar()
        if created_at is None:
            return None
        items = batch.items
        self._c.exec_driver_sql(
            ADD_BATCH_ITEMS,
            {
                "api_key_id": batch.api_key_id,
                "batch_id": batch.id,
                "ids": [i.id for i in items],
                "kinds": [i.kind for i in items],
                "sources": [i.source_account_id for i in items],
                "destinations": [i.destination_account_id for i in items],
                "amounts": [i.amount for i in items],
                "currencies": [i.currency for i in items],
                "descriptions": [i.description for i in items],
                "metadata": [Jsonb(i.metadata) for i in items],
                "group_ids": [i.group_id for i in items],
                "shards": [i.shard for i in items],
            },
        )
        # One statement, one transaction: every item has the batch's timestamp.
        return BatchRecord(
            batch.id, batch.atomic, created_at, [_accepted(i, created_at, batch.id) for i in items]
        )

    def by_idempotency_keys(
        self, keys: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], KeyedRecord]:
        if not keys:
            return {}
        rows = self._c.exec_driver_sql(
            BY_KEYS,
            {"api_key_ids": [k[0] for k in keys], "keys": [k[1] for k in keys]},
        )
        return {
            (row.api_key_id, row.idempotency_key): KeyedRecord(
                row.request_hash, transfer_record(row)
            )
            for row in rows
        }

    def batch_by_idempotency_key(self, api_key_id: str, key: str) -> KeyedRecord | None:
        row = self._c.exec_driver_sql(BATCH_BY_KEY, {"api_key_id": api_key_id, "key": key}).first()
        if row is None:
            return None
        return KeyedRecord(row.request_hash, self._batch(row))

    def get(self, transfer_id: str) -> TransferRecord | None:
        row = self._c.exec_driver_sql(GET, {"id": transfer_id}).first()
        return None if row is None else transfer_record(row)

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        row = self._c.exec_driver_sql(BATCH_BY_ID, {"id": batch_id}).first()
        return None if row is None else self._batch(row)

    def _batch(self, row: Any) -> BatchRecord:
        items = self._c.exec_driver_sql(BATCH_ITEMS, {"id": row.id})
        return BatchRecord(row.id, row.atomic, row.created_at, [transfer_record(i) for i in items])

    def claim(self, *, shard: int, limit: int, only_ids: Sequence[str] | None = None) -> Claim:
        # Columns as in CLAIM_COLUMNS: id, source, destination, amount, created_at,
        # group_id, kind, hold_id, reverses_id, reversal_amount, unit_size, now.
        if only_ids is None:
            rows = self._c.driver_rows(CLAIM, {"shard": shard, "limit": limit})
        else:
            rows = self._c.driver_rows(CLAIM_IDS, {"ids": list(only_ids), "limit": limit})
        if not rows:
            return Claim([], now=self._now())
        # Whole units up to `limit` transfers (the first unit even if bigger); heads cut off
        # here stay PENDING and are released when this transaction ends.
        kept: list[tuple[Any, ...]] = []
        size = 0
        for row in rows:
            if kept and size + row[10] > limit:
                break
            kept.append(row)
            size += row[10]
        full = len(rows) >= limit or len(kept) < len(rows)
        heads = [row[0] for row in kept if row[5] is not None]
        members: dict[str, list[ClaimedTransfer]] = {}
        if heads:
            for member in self._c.driver_rows(CLAIM_MEMBERS, {"heads": heads}):
                members.setdefault(member[5], []).append(_claimed(member))
        transfers: list[ClaimedTransfer] = []
        for row in kept:
            transfers.append(_claimed(row))
            if row[5] is not None:
                transfers += members.get(row[0], [])
        legged = [c.id for c in transfers if c.source_account_id is None]
        if legged:
            legs: dict[str, list[Leg]] = {}
            for transfer_id, account_id, amount in self._c.driver_rows(CLAIM_LEGS, {"ids": legged}):
                legs.setdefault(transfer_id, []).append(Leg(account_id, amount))
            transfers = [
                replace(c, legs=tuple(legs[c.id])) if c.id in legs else c for c in transfers
            ]
        return Claim(transfers, now=rows[0][11], full=full)

    def _now(self) -> datetime:
        value: datetime = self._c.exec_driver_sql("SELECT now()").scalar_one()
        return value

    def finalize(
        self,
        outcomes: Sequence[Outcome],
        *,
        now: datetime,
        outbox: Outbox,
        payloads: Mapping[str, BroughtEvent] | None = None,
    ) -> list[str]:
        if not outcomes:
            return []
        brought = payloads or {}
        rows = self._c.exec_driver_sql(
            FINALIZE,
            {
                "now": now,
                "ids": ",".join(o.transfer_id for o in outcomes),
                "statuses": ",".join(
                    "posted" if isinstance(o, POSTED_OUTCOMES) else "rejected" for o in outcomes
                ),
                "reasons": ",".join(
                    o.reason.value if isinstance(o, Rejected) else "" for o in outcomes
                ),
                "rejected_accounts": ",".join(
                    (o.account_id or "") if isinstance(o, Rejected) else "" for o in outcomes
                ),
                "pre_ids": list(brought),
                "pre_event_ids": [b.event_id for b in brought.values()],
                "pre_payloads": [b.payload for b in brought.values()],
                "pre_accounts": [",".join(b.accounts) for b in brought.values()],
                "outbox_time": outbox.time,
                "requeue_seconds": outbox.requeue_after_seconds,
            },
        )
        return [row.id for row in rows]

    def lock_originals(self, transfer_ids: Collection[str]) -> dict[str, OriginalState]:
        return sql_movements.lock_originals(self._c, transfer_ids)

    def reversing(self, original_id: str) -> int:
        return sql_movements.reversing(self._c, original_id)

    def set_reversed(self, reversed_amounts: Mapping[str, int]) -> None:
        sql_movements.set_reversed(self._c, reversed_amounts)

    def movements(self, transfer_ids: Sequence[str]) -> dict[str, TransactionRecord]:
        return sql_movements.movements_by_id(self._c, transfer_ids)

    def get_movement(self, transfer_id: str) -> TransactionRecord | None:
        return sql_movements.get_movement(self._c, transfer_id)

    def list_movements(self, *, after_id: str | None, limit: int) -> list[TransactionRecord]:
        return sql_movements.list_movements(self._c, after_id=after_id, limit=limit)

    def record_posting_failure(
        self,
        transfer_ids: Sequence[str],
        *,
        error: str,
        attempts_max: int,
        retry_delays_seconds: Sequence[float],
    ) -> list[str]:
        rows = self._c.exec_driver_sql(
            RECORD_FAILURE,
            {
                "ids": list(transfer_ids),
                "error": error,
                "attempts_max": attempts_max,
                "delays": [float(d) for d in retry_delays_seconds],
            },
        )
        return [row.id for row in rows if row.status == "quarantined"]

    def stale_shards(self, *, older_than: datetime) -> dict[int, int]:
        rows = self._c.exec_driver_sql(
            STALE_SHARDS, {"older_than": older_than, "rows_max": stale_scan_rows_max}
        )
        return {int(row.shard): int(row.stale) for row in rows}

    def release_quarantined_ids(self, transfer_id: str) -> list[str]:
        return [row.id for row in self._c.exec_driver_sql(RELEASE, {"id": transfer_id})]


class SqlEntryRepository:
    def __init__(self, connection: LazyConnection) -> None:
        self._c = connection

    def add_posted(self, outcomes: Sequence[Outcome]) -> None:
        entries = [e for o in outcomes if isinstance(o, Posted) for e in o.entries]
        if not entries:
            return
        self._c.exec_driver_sql(
            ADD_ENTRIES,
            {
                "transfer_ids": ",".join(e.transfer_id for e in entries),
                "account_ids": ",".join(e.account_id for e in entries),
                "amounts": ",".join(str(e.amount) for e in entries),
                "balances": ",".join(str(e.balance_after) for e in entries),
                "legs": ",".join(str(e.leg) for e in entries),
            },
        )

    def list_page(
        self,
        account_id: str,
        *,
        after_id: int | None,
        limit: int,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> list[EntryRecord]:
        rows = self._c.exec_driver_sql(
            ENTRIES_PAGE,
            {
                "account_id": account_id,
                "after": 0 if after_id is None else after_id,
                "limit": limit,
                "created_after": created_after or FAR_PAST,
                "created_before": created_before or FAR_FUTURE,
            },
        )
        return [
            EntryRecord(
                id=row.id,
                transfer_id=row.transfer_id,
                account_id=row.account_id,
                amount=row.amount,
                balance_after=int(row.balance_after),
                created_at=row.created_at,
            )
            for row in rows
        ]
