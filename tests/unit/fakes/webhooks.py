"""`FakeEndpoints`, `FakeEvents` and `FakeDeliveries`: the webhooks' tables."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ledger_core.domain.ids import new_id
from ledger_core.domain.records import AttemptRecord, DeliveryRecord, EndpointRecord
from ledger_core.domain.webhooks import (
    AttemptDecision,
    DeliveryStatus,
    EndpointStatus,
    endpoint_matches,
)
from ledger_core.service_layer.ports import ClaimedDelivery, EndpointBusy

from .base import _Repository
from .errors import FakeIntegrityError
from .rows import AttemptRow, DeliveryRow, EndpointRow, State
from .schema import ENDPOINT_COLUMNS, RETRYABLE_DELIVERIES, _check_delivery, _json, _require


class FakeEndpoints(_Repository):
    table = "endpoints"

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
        s = self._statement("add")
        _require(id not in s.endpoints, "pk_webhook_endpoints")
        self._uow.wrote()
        s.endpoints[id] = EndpointRow(
            id, url, _json(events), _json(account_ids), description, secret, self._now
        )

    def get(self, endpoint_id: str) -> EndpointRecord | None:
        row = self._statement("get").endpoints.get(endpoint_id)
        return None if row is None or row.deleted_at is not None else row.record()

    def list_page(self, *, after_id: str | None, limit: int) -> list[EndpointRecord]:
        s = self._statement("list_page")
        rows = sorted((e for e in s.endpoints.values() if e.deleted_at is None), key=lambda e: e.id)
        if after_id is not None:
            rows = [e for e in rows if e.id > after_id]
        return [e.record() for e in rows[:limit]]

    def enabled(self) -> list[EndpointRecord]:
        s = self._statement("enabled")
        return [
            e.record()
            for e in sorted(s.endpoints.values(), key=lambda e: e.id)
            if e.status == EndpointStatus.ENABLED.value and e.deleted_at is None
        ]

    def update(self, endpoint_id: str, **values: Any) -> None:
        self._statement("update")
        unknown = set(values) - ENDPOINT_COLUMNS
        if unknown:
            raise FakeIntegrityError(f"webhook_endpoints has no column {sorted(unknown)}")
        self._update(endpoint_id, values)

    def _update(self, endpoint_id: str, values: Mapping[str, Any]) -> None:
        if endpoint_id not in self._s.endpoints:
            return
        self._uow.lock_row("webhook_endpoints", endpoint_id)
        row = self._s.endpoints[endpoint_id]
        self._uow.wrote()
        for name, value in values.items():
            setattr(row, name, _json(value) if name in ("events", "account_ids") else value)
        _require(row.status in ("enabled", "disabled"), "ck_webhook_endpoints_status_known")

    def record_success(self, endpoint_id: str, now: datetime) -> None:
        self._statement("record_success")
        self._update(endpoint_id, {"last_success_at": now, "failing_since": None})

    def record_failure(self, endpoint_id: str, now: datetime) -> None:
        s = self._statement("record_failure")
        row = s.endpoints.get(endpoint_id)
        if row is not None and row.failing_since is None:
            self._update(endpoint_id, {"failing_since": now})

    def lock(self, endpoint_id: str) -> EndpointRecord | None:
        s = self._statement("lock")
        if endpoint_id not in s.endpoints:
            return None
        self._uow.lock_row("webhook_endpoints", endpoint_id)
        return self._s.endpoints[endpoint_id].record()

    def disable(self, endpoint_id: str, *, reason: str) -> None:
        s = self._statement("disable")
        row = s.endpoints.get(endpoint_id)
        if row is None:
            return
        already = row.status == EndpointStatus.DISABLED.value and row.disabled_at is not None
        self._update(
            endpoint_id,
            {
                "status": EndpointStatus.DISABLED.value,
                "disabled_reason": reason,
                # clock_timestamp(): the store's clock.
                "disabled_at": row.disabled_at if already else self._store.now(),
            },
        )

    def enable(self, endpoint_id: str) -> None:
        # LOCK TABLE events IN SHARE MODE has nothing to wait for here: a unit of work
        # that finalises postings writes its events and deliveries in one step.
        self._statement("enable")
        self._update(
            endpoint_id,
            {
                "status": EndpointStatus.ENABLED.value,
                "disabled_reason": None,
                "failing_since": None,
            },
        )


class FakeEvents(_Repository):
    table = "events"

    def payload(self, event_id: str) -> str | None:
        row = self._statement("payload").events.get(event_id)
        return None if row is None else row.payload


class FakeDeliveries(_Repository):
    table = "deliveries"

    @staticmethod
    def _record(s: State, row: DeliveryRow) -> DeliveryRecord:
        return DeliveryRecord(
            id=row.id,
            event_id=row.event_id,
            event_type=s.events[row.event_id].type,
            endpoint_id=row.endpoint_id,
            status=row.status,
            attempts=row.attempts,
            last_status_code=row.last_status_code,
            last_error=row.last_error,
            next_attempt_at=row.next_attempt_at,
            created_at=row.created_at,
        )

    def get(self, delivery_id: str) -> DeliveryRecord | None:
        s = self._statement("get")
        row = s.deliveries.get(delivery_id)
        return None if row is None else self._record(s, row)

    def list_page(
        self, endpoint_id: str, *, after_id: str | None, limit: int
    ) -> list[DeliveryRecord]:
        s = self._statement("list_page")
        rows = sorted(
            (d for d in s.deliveries.values() if d.endpoint_id == endpoint_id), key=lambda d: d.id
        )
        if after_id is not None:
            rows = [d for d in rows if d.id > after_id]
        return [self._record(s, d) for d in rows[:limit]]

    def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        s = self._statement("attempts")
        return [
            AttemptRecord(a.attempted_at, a.status_code, a.error, a.duration_milliseconds)
            for a in sorted(s.attempts, key=lambda a: a.id)
            if a.delivery_id == delivery_id
        ]

    @staticmethod
    def _due(row: DeliveryRow, now: datetime) -> bool:
        return (
            row.status in RETRYABLE_DELIVERIES
            and (row.next_attempt_at is None or row.next_attempt_at <= now)
            and (row.leased_until is None or row.leased_until < now)
        )

    def _update(self, delivery_id: str, **values: Any) -> DeliveryRow | None:
        if delivery_id not in self._s.deliveries:
            return None
        self._uow.lock_row("webhook_deliveries", delivery_id)
        row = self._s.deliveries[delivery_id]
        self._uow.wrote()
        for name, value in values.items():
            setattr(row, name, value)
        _check_delivery(row)
        return row

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
        s = self._statement("claim")
        row = s.deliveries.get(delivery_id)
        if row is None or not self._due(row, now):
            return None
        endpoint_id = row.endpoint_id
        # The endpoint's row first, as in the SQL: it serialises the claims of one endpoint.
        self._uow.lock_row("webhook_endpoints", endpoint_id)
        s = self._s
        leases = sum(
            1
            for d in s.deliveries.values()
            if d.endpoint_id == endpoint_id and d.leased_until is not None and d.leased_until > now
        )
        self._uow.lock_row("webhook_deliveries", delivery_id)
        row = self._s.deliveries[delivery_id]
        if not self._due(row, now):  # re-checked on the row as it is once locked
            return None
        if leases >= endpoint_concurrency_max:
            self._update(delivery_id, next_attempt_at=busy_retry_at, enqueued_until=None)
            return EndpointBusy(endpoint_id, leases)
        updated = self._update(
            delivery_id,
            attempts=row.attempts + 1,
            leased_until=lease_until,
            lease_token=lease_token,
        )
        assert updated is not None
        s = self._s
        # The endpoint as it is, deleted or not: the use case decides what to do with it.
        return ClaimedDelivery(
            updated.id,
            updated.attempts,
            updated.event_id,
            s.events[updated.event_id].payload,
            s.endpoints[updated.endpoint_id].record(),
            lease_token,
        )

    def mark_enqueued(self, *, now: datetime, until: datetime, limit: int) -> list[str]:
        s = self._statement("mark_enqueued")
        due = [
            d
            for d in s.deliveries.values()
            if self._due(d, now) and (d.enqueued_until is None or d.enqueued_until < now)
        ]
        # ORDER BY next_attempt_at: NULLs last, as PostgreSQL sorts them ascending.
        due.sort(key=lambda d: (d.next_attempt_at is None, d.next_attempt_at or now))
        ids: list[str] = []
        for d in due:
            if len(ids) >= limit:
                break
            if self._uow.lock_row("webhook_deliveries", d.id, skip_locked=True):
                ids.append(d.id)
        for delivery_id in ids:
            self._update(delivery_id, enqueued_until=until)
        return ids

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
        s = self._statement("record_attempt")
        row = s.deliveries.get(delivery_id)
        if row is None:
            return False
        self._uow.lock_row("webhook_deliveries", delivery_id)
        row = self._s.deliveries[delivery_id]
        if row.lease_token != lease_token:  # WHERE lease_token = %(token)s
            return False
        self._update(
            delivery_id,
            status=decision.status.value,
            next_attempt_at=decision.next_attempt_at,
            leased_until=None,
            lease_token=None,
            enqueued_until=None,
            last_status_code=status_code,
            last_error=error,
        )
        self._s.attempts.append(
            AttemptRow(
                self._store.next_attempt_id,
                delivery_id,
                attempted_at,
                status_code,
                error,
                duration_milliseconds,
            )
        )
        self._store.next_attempt_id += 1
        return True

    def abandon(self, delivery_id: str, *, error: str) -> None:
        self._statement("abandon")
        self._update(
            delivery_id,
            status=DeliveryStatus.ABANDONED.value,
            next_attempt_at=None,
            leased_until=None,
            lease_token=None,
            enqueued_until=None,
            last_error=error,
        )

    def abandon_for_endpoint(self, endpoint_id: str, *, error: str) -> None:
        s = self._statement("abandon_for_endpoint")
        for d in [
            d
            for d in s.deliveries.values()
            if d.endpoint_id == endpoint_id and d.status in RETRYABLE_DELIVERIES
        ]:
            self._update(
                d.id, status=DeliveryStatus.ABANDONED.value, next_attempt_at=None, last_error=error
            )

    def schedule_now(self, delivery_id: str, *, now: datetime, enqueued_until: datetime) -> bool:
        s = self._statement("schedule_now")
        row = s.deliveries.get(delivery_id)
        if row is None or not (row.leased_until is None or row.leased_until < now):
            return False
        self._update(
            delivery_id,
            status=DeliveryStatus.PENDING.value,
            next_attempt_at=now,
            enqueued_until=enqueued_until,
        )
        return True

    def add_missed(self, endpoint_id: str, *, since: datetime, limit: int, now: datetime) -> int:
        s = self._statement("add_missed")
        endpoint_row = s.endpoints.get(endpoint_id)
        if endpoint_row is None:
            return 0
        endpoint = endpoint_row.record()
        created = 0
        for event in sorted(s.events.values(), key=lambda e: e.id):  # ORDER BY e.id
            if created >= limit:
                break
            recorded = event.recorded_at or event.created_at
            transfer = s.transfers.get(event.transfer_id)
            if recorded < since or transfer is None:
                continue
            accounts = {
                a for a in (transfer.source_account_id, transfer.destination_account_id) if a
            }
            if not endpoint_matches(endpoint, event.type, accounts):
                continue

            def exists(state: State, event_id: str = event.id) -> bool:
                return any(
                    d.event_id == event_id and d.endpoint_id == endpoint_id
                    for d in state.deliveries.values()
                )

            # NOT EXISTS, then ON CONFLICT DO NOTHING for one another transaction inserts.
            if not self._uow.insert_unique(("webhook_deliveries", event.id, endpoint_id), exists):
                continue
            self._uow.wrote()
            delivery_id = new_id("wd")
            self._s.deliveries[delivery_id] = DeliveryRow(
                delivery_id,
                event.id,
                endpoint_id,
                next_attempt_at=now,
                enqueued_until=None,
                created_at=now,
            )
            created += 1
        return created
