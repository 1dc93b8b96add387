"""PostgreSQL repositories of webhook endpoints, events (the outbox) and deliveries.

Times come from the caller (an injectable clock), not from the database's now(), so
that schedules can be tested without waiting. Two are the database's own clock, since they
are compared with each other: `disabled_at` of an endpoint and `recorded_at` of an event.

Locks are taken endpoint first, then its deliveries, by every statement sequence here that
takes both (a claim, recording an attempt, a disable): two of them never deadlock.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update

from ledger_core.adapters import tables as t
from ledger_core.adapters.sql_connection import LazyConnection
from ledger_core.adapters.sql_transfers import NEW_ID
from ledger_core.domain.records import AttemptRecord, DeliveryRecord, EndpointRecord
from ledger_core.domain.webhooks import AttemptDecision, DeliveryStatus, EndpointStatus
from ledger_core.service_layer.ports import ClaimedDelivery, EndpointBusy

RETRYABLE = (DeliveryStatus.PENDING.value, DeliveryStatus.FAILED.value)
# Enabling an endpoint waits this long at most for the postings in flight to finish (new
# postings queue behind it meanwhile); past it the request fails and can be retried.
enable_wait_for_postings_timeout_milliseconds = 5_000
# Ids sort by the clock of whoever drew them (domain.ids): the posting statement's, or a
# worker's. Replays scan events by id from this long before `since`, then keep those
# recorded since then, so clock skew and long postings cannot hide an event.
replay_id_margin_seconds = 3600
ENABLE_WAIT_FOR_POSTINGS = (
    f"SET LOCAL lock_timeout = {enable_wait_for_postings_timeout_milliseconds}",
    # SHARE conflicts with the ROW EXCLUSIVE lock a posting takes to insert its events,
    # before its statement's snapshot: this waits for the postings that may not have seen
    # the endpoint enabled, and holds back later ones until the enabling commits.
    "LOCK TABLE events IN SHARE MODE",
)
# One delivery, due now, per matching event recorded since %(since)s that the endpoint has
# none for. The match is domain.webhooks.endpoint_matches, as the posting statement
# (sql_transfers.FINALIZE) does it: the event type among the endpoint's, and its accounts
# ("every account" is a JSON null) among the transfer's.
ADD_MISSED = f"""
    INSERT INTO webhook_deliveries (id, event_id, endpoint_id, next_attempt_at, created_at)
    SELECT {NEW_ID.format("'wd'")}, m.id, %(endpoint_id)s, %(now)s, %(now)s
    FROM (
        SELECT e.id
        FROM events e
        JOIN transfers t ON t.id = e.transfer_id
        JOIN webhook_endpoints ep ON ep.id = %(endpoint_id)s
        WHERE e.id >= %(first_id)s
          AND coalesce(e.recorded_at, e.created_at) >= %(since)s
          AND ep.events ? e.type
          AND (ep.account_ids IS NULL OR jsonb_typeof(ep.account_ids) = 'null'
               -- The accounts its live delivery matched: a two-account movement's
               -- pair, or every leg of a transaction, a payment or a reversal.
               OR ep.account_ids ?| (ARRAY[t.source_account_id, t.destination_account_id]
                   || ARRAY(SELECT l.account_id FROM transfer_legs l
                            WHERE l.transfer_id = t.id)))
          AND NOT EXISTS (
              SELECT 1 FROM webhook_deliveries d
              WHERE d.event_id = e.id AND d.endpoint_id = ep.id)
        ORDER BY e.id
        LIMIT %(limit)s
    ) m
    -- A replay running at the same time may have created it.
    ON CONFLICT (event_id, endpoint_id) DO NOTHING
    RETURNING id
"""


def _endpoint(row: Any) -> EndpointRecord:
    return EndpointRecord(
        id=row.id,
        url=row.url,
        events=row.events,
        account_ids=row.account_ids,
        description=row.description,
        status=row.status,
        disabled_reason=row.disabled_reason,
        secret=row.secret,
        previous_secret=row.previous_secret,
        previous_secret_expires_at=row.previous_secret_expires_at,
        failing_since=row.failing_since,
        created_at=row.created_at,
        disabled_at=row.disabled_at,
    )


class EndpointRepository:
    def __init__(self, connection: LazyConnection) -> None:
        self._c = connection

    def add(
        self,
        *,
        id: str,
        url: str,
        events: list[str],
        account_ids: list[str] | None,
        description: str | None,
        secret: str,
    ) -> None:
        self._c.execute(
            t.webhook_endpoints.insert().values(
                id=id,
                url=url,
                events=events,
                account_ids=account_ids,
                description=description,
                secret=secret,
            )
        )

    def get(self, endpoint_id: str) -> EndpointRecord | None:
        row = self._c.execute(
            select(t.webhook_endpoints).where(
                t.webhook_endpoints.c.id == endpoint_id, t.webhook_endpoints.c.deleted_at.is_(None)
            )
        ).first()
        return None if row is None else _endpoint(row)

    def list_page(self, *, after_id: str | None, limit: int) -> list[EndpointRecord]:
        query = (
            select(t.webhook_endpoints)
            .where(t.webhook_endpoints.c.deleted_at.is_(None))
            .order_by(t.webhook_endpoints.c.id)
            .limit(limit)
        )
        if after_id is not None:
            query = query.where(t.webhook_endpoints.c.id > after_id)
        return [_endpoint(row) for row in self._c.execute(query)]

    def enabled(self) -> list[EndpointRecord]:
        rows = self._c.execute(
            select(t.webhook_endpoints).where(
                t.webhook_endpoints.c.status == EndpointStatus.ENABLED.value,
                t.webhook_endpoints.c.deleted_at.is_(None),
            )
        )
        return [_endpoint(row) for row in rows]

    def update(self, endpoint_id: str, **values: Any) -> None:
        self._c.execute(
            update(t.webhook_endpoints)
            .where(t.webhook_endpoints.c.id == endpoint_id)
            .values(**values)
        )

    def record_success(self, endpoint_id: str, now: datetime) -> None:
        self.update(endpoint_id, last_success_at=now, failing_since=None)

    def record_failure(self, endpoint_id: str, now: datetime) -> None:
        self._c.execute(
            update(t.webhook_endpoints)
            .where(
                t.webhook_endpoints.c.id == endpoint_id,
                t.webhook_endpoints.c.failing_since.is_(None),
            )
            .values(failing_since=now)
        )

    def lock(self, endpoint_id: str) -> EndpointRecord | None:
        # FOR NO KEY UPDATE: the lock the UPDATEs of this row take anyway, so that taking
        # it first changes the order of locks, not their kind. Deleted rows too: an
        # attempt in flight is still recorded.
        row = self._c.execute(
            select(t.webhook_endpoints)
            .where(t.webhook_endpoints.c.id == endpoint_id)
            .with_for_update(key_share=True)
        ).first()
        return None if row is None else _endpoint(row)

    def disable(self, endpoint_id: str, *, reason: str) -> None:
        e = t.webhook_endpoints
        already = and_(e.c.status == EndpointStatus.DISABLED.value, e.c.disabled_at.is_not(None))
        self._c.execute(
            update(e)
            .where(e.c.id == endpoint_id)
            .values(
                status=EndpointStatus.DISABLED.value,
                disabled_reason=reason,
                # The clock, not the transaction's start: compared with the recorded_at of
                # events that postings insert meanwhile.
                disabled_at=case((already, e.c.disabled_at), else_=func.clock_timestamp()),
            )
        )

    def enable(self, endpoint_id: str) -> None:
        self.update(
            endpoint_id,
            status=EndpointStatus.ENABLED.value,
            disabled_reason=None,
            failing_since=None,
        )
        for statement in ENABLE_WAIT_FOR_POSTINGS:
            self._c.exec_driver_sql(statement)


class EventRepository:
    def __init__(self, connection: LazyConnection) -> None:
        self._c = connection

    def payload(self, event_id: str) -> str | None:
        payload: str | None = self._c.scalar(
            select(t.events.c.payload).where(t.events.c.id == event_id)
        )
        return payload


class DeliveryRepository:
    def __init__(self, connection: LazyConnection) -> None:
        self._c = connection

    def _select(self) -> Any:
        d = t.webhook_deliveries
        return select(d, t.events.c.type.label("event_type")).join(
            t.events, t.events.c.id == d.c.event_id
        )

    @staticmethod
    def _record(row: Any) -> DeliveryRecord:
        return DeliveryRecord(
            id=row.id,
            event_id=row.event_id,
            event_type=row.event_type,
            endpoint_id=row.endpoint_id,
            status=row.status,
            attempts=row.attempts,
            last_status_code=row.last_status_code,
            last_error=row.last_error,
            next_attempt_at=row.next_attempt_at,
            created_at=row.created_at,
        )

    def get(self, delivery_id: str) -> DeliveryRecord | None:
        row = self._c.execute(
            self._select().where(t.webhook_deliveries.c.id == delivery_id)
        ).first()
        return None if row is None else self._record(row)

    def list_page(
        self, endpoint_id: str, *, after_id: str | None, limit: int
    ) -> list[DeliveryRecord]:
        d = t.webhook_deliveries
        query = self._select().where(d.c.endpoint_id == endpoint_id).order_by(d.c.id).limit(limit)
        if after_id is not None:
            query = query.where(d.c.id > after_id)
        return [self._record(row) for row in self._c.execute(query)]

    def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        a = t.webhook_attempts
        rows = self._c.execute(select(a).where(a.c.delivery_id == delivery_id).order_by(a.c.id))
        return [
            AttemptRecord(row.attempted_at, row.status_code, row.error, row.duration_milliseconds)
            for row in rows
        ]

    def _due(self, now: datetime) -> Any:
        d = t.webhook_deliveries
        return and_(
            d.c.status.in_(RETRYABLE),
            or_(d.c.next_attempt_at.is_(None), d.c.next_attempt_at <= now),
            or_(d.c.leased_until.is_(None), d.c.leased_until < now),
        )

    def claim(
        self,
        delivery_id: str,
        *,
        now: datetime,
        lease_until: datetime,
        lease_token: str,
        endpoint_concurrency_max: int,
        busy_retry_at: datetime,
    ) -> ClaimedDelivery | EndpointBusy | None:
        """Take the delivery for one attempt if it is due, nobody holds it, and its
        endpoint has a free slot.

        The endpoint's row lock is taken first (the order every writer of an endpoint and
        its deliveries follows), and serialises the claims of one endpoint: the live
        leases counted under it are all there are. Then one UPDATE decides between two
        workers given the same id. The attempt is counted now, so an attempt cut short by
        a crash still counts.
        """
        d = t.webhook_deliveries
        # Read first without a lock: a task for a delivery not due (a duplicate, a late
        # one) then costs one index probe and no endpoint lock.
        endpoint_id = self._c.scalar(
            select(d.c.endpoint_id).where(d.c.id == delivery_id, self._due(now))
        )
        if endpoint_id is None:
            return None
        endpoint = self._c.execute(
            select(t.webhook_endpoints)
            .where(t.webhook_endpoints.c.id == endpoint_id)
            .with_for_update(key_share=True)
        ).one()
        leases = self._c.scalar(
            select(func.count())
            .select_from(d)
            .where(d.c.endpoint_id == endpoint_id, d.c.leased_until > now)
        )
        if leases >= endpoint_concurrency_max:
            # Left due a little later, with no task marked queued: the scheduler enqueues it
            # again then. Nothing is counted: no attempt was made.
            deferred = self._c.execute(
                update(d)
                .where(d.c.id == delivery_id, self._due(now))
                .values(next_attempt_at=busy_retry_at, enqueued_until=None)
                .returning(d.c.id)
            ).first()
            return None if deferred is None else EndpointBusy(endpoint_id, leases)
        row = self._c.execute(
            update(d)
            .where(d.c.id == delivery_id, self._due(now))
            .values(attempts=d.c.attempts + 1, leased_until=lease_until, lease_token=lease_token)
            .returning(d.c.id, d.c.attempts, d.c.event_id)
        ).first()
        if row is None:
            return None
        payload = self._c.scalar(select(t.events.c.payload).where(t.events.c.id == row.event_id))
        assert payload is not None, "a delivery's event exists (events cannot be deleted)"
        return ClaimedDelivery(
            row.id, row.attempts, row.event_id, payload, _endpoint(endpoint), lease_token
        )

    def mark_enqueued(self, *, now: datetime, until: datetime, limit: int) -> list[str]:
        """Due deliveries with no task on the queue: mark them queued and return their ids."""
        d = t.webhook_deliveries
        due = (
            select(d.c.id)
            .where(self._due(now), or_(d.c.enqueued_until.is_(None), d.c.enqueued_until < now))
            .order_by(d.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        return list(
            self._c.scalars(
                update(d).where(d.c.id.in_(due)).values(enqueued_until=until).returning(d.c.id)
            )
        )

    def record_attempt(
        self,
        delivery_id: str,
        *,
        attempted_at: datetime,
        status_code: int | None,
        error: str | None,
        duration_milliseconds: int,
        decision: AttemptDecision,
        lease_token: str,
    ) -> bool:
        d = t.webhook_deliveries
        recorded = self._c.execute(
            update(d)
            # The lease fences the write: a worker whose lease expired and was claimed
            # again no longer holds this token, and its outcome is not the delivery's.
            .where(d.c.id == delivery_id, d.c.lease_token == lease_token)
            .values(
                status=decision.status.value,
                next_attempt_at=decision.next_attempt_at,
                leased_until=None,
                lease_token=None,
                # The task that made this attempt is done: the next one is due on the
                # schedule, not after the requeue window of the first enqueue.
                enqueued_until=None,
                last_status_code=status_code,
                last_error=error,
            )
            .returning(d.c.id)
        ).first()
        if recorded is None:
            return False
        self._c.execute(
            t.webhook_attempts.insert().values(
                delivery_id=delivery_id,
                attempted_at=attempted_at,
                status_code=status_code,
                error=error,
                duration_milliseconds=duration_milliseconds,
            )
        )
        return True

    def abandon(self, delivery_id: str, *, error: str) -> None:
        self._c.execute(
            update(t.webhook_deliveries)
            .where(t.webhook_deliveries.c.id == delivery_id)
            .values(
                status=DeliveryStatus.ABANDONED.value,
                next_attempt_at=None,
                leased_until=None,
                lease_token=None,
                enqueued_until=None,
                last_error=error,
            )
        )

    def abandon_for_endpoint(self, endpoint_id: str, *, error: str) -> None:
        d = t.webhook_deliveries
        self._c.execute(
            update(d)
            .where(d.c.endpoint_id == endpoint_id, d.c.status.in_(RETRYABLE))
            .values(status=DeliveryStatus.ABANDONED.value, next_attempt_at=None, last_error=error)
        )

    def schedule_now(self, delivery_id: str, *, now: datetime, enqueued_until: datetime) -> bool:
        """Make a delivery due now (a manual retry); False while an attempt is running."""
        d = t.webhook_deliveries
        row = self._c.execute(
            update(d)
            .where(d.c.id == delivery_id, or_(d.c.leased_until.is_(None), d.c.leased_until < now))
            .values(
                status=DeliveryStatus.PENDING.value,
                next_attempt_at=now,
                enqueued_until=enqueued_until,
            )
            .returning(d.c.id)
        ).first()
        return row is not None

    def add_missed(self, endpoint_id: str, *, since: datetime, limit: int, now: datetime) -> int:
        margin = timedelta(seconds=replay_id_margin_seconds)
        # A `since` near year 1 has no earlier time to scan from: scan from the first id.
        scan_from_ms = (since.timestamp() - margin.total_seconds()) * 1000
        first_id = f"evt_{max(0, int(scan_from_ms)):012x}"
        created = self._c.exec_driver_sql(
            ADD_MISSED,
            {
                "endpoint_id": endpoint_id,
                "since": since,
                "first_id": first_id,
                "limit": limit,
                "now": now,
            },
        ).fetchall()
        return len(created)
