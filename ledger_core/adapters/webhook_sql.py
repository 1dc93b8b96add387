"""PostgreSQL repositories of webhook endpoints, events (the outbox) and deliveries.

Times come from the caller (an injectable clock), not from the database's now(), so
that schedules can be tested without waiting.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update

from ledger_core.adapters import tables as t
from ledger_core.adapters.sql_connection import LazyConnection
from ledger_core.domain.records import AttemptRecord, DeliveryRecord, EndpointRecord
from ledger_core.domain.webhooks import AttemptDecision, DeliveryStatus, EndpointStatus
from ledger_core.service_layer.ports import ClaimedDelivery

RETRYABLE = (DeliveryStatus.PENDING.value, DeliveryStatus.FAILED.value)


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
        self, delivery_id: str, *, now: datetime, lease_until: datetime
    ) -> ClaimedDelivery | None:
        """Take the delivery for one attempt if it is due and nobody holds it.

        One UPDATE decides: of two workers given the same id, one gets the row back.
        The attempt is counted now, so an attempt cut short by a crash still counts.
        """
        d = t.webhook_deliveries
        row = self._c.execute(
            update(d)
            .where(d.c.id == delivery_id, self._due(now))
            .values(attempts=d.c.attempts + 1, leased_until=lease_until)
            .returning(d.c.id, d.c.attempts, d.c.event_id, d.c.endpoint_id)
        ).first()
        if row is None:
            return None
        endpoint = self._c.execute(
            select(t.webhook_endpoints).where(t.webhook_endpoints.c.id == row.endpoint_id)
        ).one()
        payload = self._c.scalar(select(t.events.c.payload).where(t.events.c.id == row.event_id))
        assert payload is not None, "a delivery's event exists (events cannot be deleted)"
        return ClaimedDelivery(row.id, row.attempts, row.event_id, payload, _endpoint(endpoint))

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
    ) -> None:
        self._c.execute(
            t.webhook_attempts.insert().values(
                delivery_id=delivery_id,
                attempted_at=attempted_at,
                status_code=status_code,
                error=error,
                duration_milliseconds=duration_milliseconds,
            )
        )
        self._c.execute(
            update(t.webhook_deliveries)
            .where(t.webhook_deliveries.c.id == delivery_id)
            .values(
                status=decision.status.value,
                next_attempt_at=decision.next_attempt_at,
                leased_until=None,
                # The task that made this attempt is done: the next one is due on the
                # schedule, not after the requeue window of the first enqueue.
                enqueued_until=None,
                last_status_code=status_code,
                last_error=error,
            )
        )

    def abandon(self, delivery_id: str, *, error: str) -> None:
        self._c.execute(
            update(t.webhook_deliveries)
            .where(t.webhook_deliveries.c.id == delivery_id)
            .values(
                status=DeliveryStatus.ABANDONED.value,
                next_attempt_at=None,
                leased_until=None,
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
