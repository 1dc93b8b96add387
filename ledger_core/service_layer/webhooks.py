"""Webhook use cases: endpoints, the outbox written with each posting, and delivery.

The posting transaction writes the event and one delivery row per matching endpoint,
so no event is lost between posting and delivery and none exists for a rolled-back
posting. Deliveries are then attempted by the `webhooks` workers; the time of the next
attempt lives in PostgreSQL, and a beat task enqueues what is due.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from ledger_core.domain.ids import new_id
from ledger_core.domain.webhooks import (
    DeliveryStatus,
    EndpointStatus,
    EventType,
    decide_after_attempt,
    new_secret,
    secret_rotation_overlap_seconds,
    signing_secrets,
)
from ledger_core.service_layer.errors import Failure
from ledger_core.service_layer.pagination import Page, cursor_key, page_of
from ledger_core.service_layer.ports import (
    NULL_METRICS,
    EnqueueDeliveries,
    Metrics,
    UnitOfWork,
    UnitOfWorkFactory,
    UrlGuard,
    WebhookSender,
)

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
ENDPOINT_PREFIX, EVENT_PREFIX, DELIVERY_PREFIX = "we", "evt", "wd"
# Recording an attempt's outcome after the HTTP call is worth a few quick tries: the
# receiver already has the event, and an unrecorded success would be sent again.
record_attempts_max = 5


def utc_now() -> datetime:
    return datetime.now(UTC)


def _not_found(what: str) -> Failure:
    return Failure(f"{what}_not_found", f"No such {what.replace('_', ' ')}.")


def _check_events(events: Sequence[str]) -> Failure | None:
    known = {e.value for e in EventType}
    unknown = sorted(set(events) - known)
    if not events or unknown:
        return Failure(
            "validation_error",
            f"events must be a non-empty subset of {sorted(known)}; unknown: {unknown}",
        )
    return None


def _check_url(guard: UrlGuard, url: str) -> Failure | None:
    problem = guard.check(url)
    return (
        None
        if problem is None
        else Failure(problem, f"This URL cannot receive webhooks ({problem}).")
    )


def _check_accounts(uow: UnitOfWork, account_ids: Sequence[str] | None) -> Failure | None:
    if not account_ids:
        return None
    missing = sorted(set(account_ids) - set(uow.accounts.facts(account_ids)))
    if missing:
        return Failure("account_not_found", f"No such accounts: {missing}")
    return None


def create_endpoint(
    uow_factory: UnitOfWorkFactory,
    guard: UrlGuard,
    *,
    url: str,
    events: Sequence[str] | None,
    account_ids: Sequence[str] | None,
    description: str | None,
) -> dict[str, Any] | Failure:
    failure = _check_url(guard, url)
    if failure is not None:
        return failure
    event_list = list(events) if events is not None else [e.value for e in EventType]
    failure = _check_events(event_list)
    if failure is not None:
        return failure
    endpoint_id = new_id(ENDPOINT_PREFIX)
    with uow_factory() as uow:
        failure = _check_accounts(uow, account_ids)
        if failure is not None:
            return failure
        uow.endpoints.add(
            id=endpoint_id,
            url=url,
            events=event_list,
            account_ids=list(account_ids) if account_ids else None,
            description=description,
            secret=new_secret(),
        )
        record = uow.endpoints.get(endpoint_id)
        assert record is not None, "an endpoint added in this transaction reads back"
        uow.commit()
    return record.to_json(include_secret=True)


def get_endpoint(uow_factory: UnitOfWorkFactory, endpoint_id: str) -> dict[str, Any] | Failure:
    with uow_factory() as uow:
        record = uow.endpoints.get(endpoint_id)
    return _not_found("webhook_endpoint") if record is None else record.to_json()


def list_endpoints(
    uow_factory: UnitOfWorkFactory, *, cursor: str | None, limit: int
) -> Page | Failure:
    after_id = cursor_key(cursor)
    if isinstance(after_id, Failure):
        return after_id
    with uow_factory() as uow:
        records = uow.endpoints.list_page(after_id=after_id, limit=limit + 1)
    return page_of(records, limit)


def update_endpoint(
    uow_factory: UnitOfWorkFactory, guard: UrlGuard, endpoint_id: str, changes: dict[str, Any]
) -> dict[str, Any] | Failure:
    """Apply a partial update: url, events, account_ids, description, status.

    An explicit null resets events and account_ids to "all"; url and status cannot be null.
    """
    changes = dict(changes)
    if changes.get("events", ...) is None:
        changes["events"] = [e.value for e in EventType]
    for required in ("url", "status"):
        if required in changes and changes[required] is None:
            return Failure("validation_error", f"{required} cannot be null.")
    if "url" in changes:
        failure = _check_url(guard, changes["url"])
        if failure is not None:
            return failure
    if "events" in changes:
        failure = _check_events(changes["events"])
        if failure is not None:
            return failure
    values = changes
    if "status" in values:
        # Enabling again gives the endpoint a fresh five days before it is judged failing.
        values["disabled_reason"] = None if values["status"] == "enabled" else "manual"
        values["failing_since"] = None
    if "account_ids" in values and not values["account_ids"]:
        values["account_ids"] = None
    with uow_factory() as uow:
        if uow.endpoints.get(endpoint_id) is None:
            return _not_found("webhook_endpoint")
        failure = _check_accounts(uow, values.get("account_ids"))
        if failure is not None:
            return failure
        if values:
            uow.endpoints.update(endpoint_id, **values)
        record = uow.endpoints.get(endpoint_id)
        assert record is not None, "the endpoint read above still exists in this transaction"
        uow.commit()
    return record.to_json()


def delete_endpoint(
    uow_factory: UnitOfWorkFactory, endpoint_id: str, *, clock: Clock = utc_now
) -> dict[str, Any] | Failure:
    """Soft delete: deliveries keep their endpoint for the record; pending ones stop."""
    with uow_factory() as uow:
        if uow.endpoints.get(endpoint_id) is None:
            return _not_found("webhook_endpoint")
        uow.endpoints.update(endpoint_id, deleted_at=clock(), status=EndpointStatus.DISABLED.value)
        uow.deliveries.abandon_for_endpoint(endpoint_id, error="endpoint_deleted")
        uow.commit()
    return {"id": endpoint_id, "object": "webhook_endpoint", "deleted": True}


def rotate_secret(
    uow_factory: UnitOfWorkFactory, endpoint_id: str, *, clock: Clock = utc_now
) -> dict[str, Any] | Failure:
    """New secret now; the old one keeps signing (beside the new) for 24 hours."""
    now = clock()
    secret = new_secret()
    with uow_factory() as uow:
        record = uow.endpoints.get(endpoint_id)
        if record is None:
            return _not_found("webhook_endpoint")
        uow.endpoints.update(
            endpoint_id,
            secret=secret,
            previous_secret=record.secret,
            previous_secret_expires_at=now + timedelta(seconds=secret_rotation_overlap_seconds),
        )
        uow.commit()
    return {"id": endpoint_id, "object": "webhook_endpoint", "secret": secret}


def get_event(uow_factory: UnitOfWorkFactory, event_id: str) -> dict[str, Any] | Failure:
    with uow_factory() as uow:
        payload = uow.events.payload(event_id)
    return _not_found("event") if payload is None else json.loads(payload)


def list_deliveries(
    uow_factory: UnitOfWorkFactory, endpoint_id: str, *, cursor: str | None, limit: int
) -> Page | Failure:
    after_id = cursor_key(cursor)
    if isinstance(after_id, Failure):
        return after_id
    with uow_factory() as uow:
        if uow.endpoints.get(endpoint_id) is None:
            return _not_found("webhook_endpoint")
        records = uow.deliveries.list_page(endpoint_id, after_id=after_id, limit=limit + 1)
    return page_of(records, limit)


def get_delivery(uow_factory: UnitOfWorkFactory, delivery_id: str) -> dict[str, Any] | Failure:
    """A delivery with every attempt made, oldest first."""
    with uow_factory() as uow:
        record = uow.deliveries.get(delivery_id)
        if record is None:
            return _not_found("webhook_delivery")
        attempts = uow.deliveries.attempts(delivery_id)
    return {**record.to_json(), "attempt_log": [a.to_json() for a in attempts]}


def retry_delivery(
    uow_factory: UnitOfWorkFactory,
    enqueue: EnqueueDeliveries,
    delivery_id: str,
    *,
    requeue_after_seconds: float,
    clock: Clock = utc_now,
) -> dict[str, Any] | Failure:
    now = clock()
    with uow_factory() as uow:
        if uow.deliveries.get(delivery_id) is None:
            return _not_found("webhook_delivery")
        scheduled = uow.deliveries.schedule_now(
            delivery_id, now=now, enqueued_until=now + timedelta(seconds=requeue_after_seconds)
        )
        if not scheduled:
            return Failure("delivery_in_progress", "An attempt is running; retry after it.")
        record = uow.deliveries.get(delivery_id)
        assert record is not None, "the delivery read above still exists in this transaction"
        uow.commit()
    enqueue([delivery_id])
    return record.to_json()


def enqueue_due_deliveries(
    uow_factory: UnitOfWorkFactory,
    enqueue: EnqueueDeliveries,
    *,
    requeue_after_seconds: float,
    limit: int,
    clock: Clock = utc_now,
) -> list[str]:
    """Enqueue every due delivery that has no task on the queue (retries, lost enqueues,
    attempts whose worker died)."""
    now = clock()
    with uow_factory() as uow:
        ids = uow.deliveries.mark_enqueued(
            now=now, until=now + timedelta(seconds=requeue_after_seconds), limit=limit
        )
        uow.commit()
    if ids:
        enqueue(ids)
    return ids


def attempt_delivery(
    uow_factory: UnitOfWorkFactory,
    sender: WebhookSender,
    delivery_id: str,
    *,
    schedule: tuple[float, ...],
    lease_seconds: float,
    clock: Clock = utc_now,
    jitter: Callable[[], float] = lambda: random.uniform(-1, 1),  # noqa: S311 (not crypto)
    metrics: Metrics = NULL_METRICS,
) -> DeliveryStatus | None:
    """Make one attempt if the delivery is due and unclaimed; record its outcome.

    Returns the delivery's new status, or None when there was nothing to do (not due,
    or another worker holds it)."""
    now = clock()
    with uow_factory() as uow:
        claimed = uow.deliveries.claim(
            delivery_id, now=now, lease_until=now + timedelta(seconds=lease_seconds)
        )
        if claimed is not None and (claimed.endpoint.status != EndpointStatus.ENABLED.value):
            uow.deliveries.abandon(delivery_id, error="endpoint_disabled")
            uow.commit()
            metrics.webhook_attempt("endpoint_disabled")
            return DeliveryStatus.ABANDONED
        uow.commit()
    if claimed is None:
        return None

    endpoint = claimed.endpoint
    result = sender.send(
        endpoint.url,
        message_id=claimed.event_id,
        payload=claimed.payload,
        secrets=signing_secrets(
            endpoint.secret, endpoint.previous_secret, endpoint.previous_secret_expires_at, now
        ),
        timestamp=now,
    )
    finished = clock()
    decision = decide_after_attempt(
        attempts_made=claimed.attempts,
        status_code=result.status_code,
        now=finished,
        failing_since=endpoint.failing_since,
        schedule=schedule,
        jitter=jitter(),
    )

    @retry(
        retry=retry_if_exception_type(Exception),
        stop=stop_after_attempt(record_attempts_max),
        wait=wait_exponential(multiplier=0.2, max=2),
        reraise=True,
    )
    def record() -> None:
        with uow_factory() as uow:
            uow.deliveries.record_attempt(
                delivery_id,
                attempted_at=now,
                status_code=result.status_code,
                error=result.error,
                duration_milliseconds=result.duration_milliseconds,
                decision=decision,
            )
            if decision.status is DeliveryStatus.SUCCEEDED:
                uow.endpoints.record_success(endpoint.id, finished)
            else:
                uow.endpoints.record_failure(endpoint.id, finished)
            if decision.disable_endpoint is not None:
                uow.endpoints.update(
                    endpoint.id,
                    status=EndpointStatus.DISABLED.value,
                    disabled_reason=decision.disable_endpoint,
                )
                uow.deliveries.abandon_for_endpoint(endpoint.id, error="endpoint_disabled")
            uow.commit()

    record()
    metrics.webhook_attempt(decision.status.value)
    if decision.disable_endpoint is not None:
        log.warning("webhook endpoint %s disabled: %s", endpoint.id, decision.disable_endpoint)
    return decision.status
