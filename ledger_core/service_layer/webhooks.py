"""Webhook use cases: endpoints, the outbox written with each posting, and delivery.

The posting transaction writes the event and one delivery row per matching endpoint,
so no event is lost between posting and delivery and none exists for a rolled-back
posting. Deliveries are then attempted by the `webhooks` workers; the time of the next
attempt lives in PostgreSQL, and a beat task enqueues what is due. An endpoint gets no
deliveries while disabled; enabling it (or a replay) creates those of the events it missed.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from ledger_core.domain.ids import new_id
from ledger_core.domain.records import DeliveryRecord, EndpointRecord, iso_utc
from ledger_core.domain.webhooks import (
    DeliveryStatus,
    EndpointStatus,
    EventType,
    decide_after_attempt,
    new_secret,
    secret_rotation_overlap_seconds,
    signing_secrets,
)
from ledger_core.service_layer.clock import Clock, utc_now
from ledger_core.service_layer.errors import Failure
from ledger_core.service_layer.pagination import Page, read_page
from ledger_core.service_layer.ports import (
    NULL_METRICS,
    AttemptResult,
    EndpointBusy,
    EnqueueDeliveries,
    Metrics,
    UnitOfWork,
    UnitOfWorkFactory,
    UrlGuard,
    WebhookSender,
)

log = logging.getLogger(__name__)

ENDPOINT_PREFIX, EVENT_PREFIX, DELIVERY_PREFIX = "we", "evt", "wd"
# Recording an attempt's outcome after the HTTP call is worth a few quick tries: the
# receiver already has the event, and an unrecorded success would be sent again.
record_attempts_max = 5
lease_token_size_bytes = 16


def new_lease_token() -> str:
    return secrets.token_urlsafe(lease_token_size_bytes)


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
    return read_page(
        uow_factory,
        cursor,
        limit,
        lambda uow, after, n: uow.endpoints.list_page(after_id=after, limit=n),
    )


def update_endpoint(
    uow_factory: UnitOfWorkFactory,
    guard: UrlGuard,
    endpoint_id: str,
    changes: dict[str, Any],
    *,
    replay_events_max: int,
    clock: Clock = utc_now,
) -> dict[str, Any] | Failure:
    """Apply a partial update: url, events, account_ids, description, status.

    An explicit null resets events and account_ids to "all"; url and status cannot be null.
    Enabling a disabled endpoint then creates the deliveries of the events it missed
    while disabled (at most `replay_events_max`; the count is in `replayed`).
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
    status = values.pop("status", None)
    if "account_ids" in values and not values["account_ids"]:
        values["account_ids"] = None
    with uow_factory() as uow:
        # The endpoint's row first, as every writer of an endpoint and its deliveries.
        current = uow.endpoints.lock(endpoint_id)
        if current is None or uow.endpoints.get(endpoint_id) is None:
            return _not_found("webhook_endpoint")
        failure = _check_accounts(uow, values.get("account_ids"))
        if failure is not None:
            return failure
        if values:
            uow.endpoints.update(endpoint_id, **values)
        enabling = _change_status(uow, current, status)
        record = uow.endpoints.get(endpoint_id)
        assert record is not None, "the endpoint read above still exists in this transaction"
        uow.commit()
    body = record.to_json()
    if enabling:
        body["replayed"] = _replay_missed(uow_factory, current, replay_events_max, clock)
    return body


def _change_status(uow: UnitOfWork, current: EndpointRecord, status: str | None) -> bool:
    """Apply a PATCHed status; True when it enables a disabled endpoint."""
    if status == EndpointStatus.DISABLED.value:
        uow.endpoints.disable(current.id, reason="manual")
        uow.endpoints.update(current.id, failing_since=None)
        return False
    if status != EndpointStatus.ENABLED.value:
        return False
    if current.status == EndpointStatus.ENABLED.value:
        # Enabling again gives the endpoint a fresh five days before it is judged failing.
        uow.endpoints.update(current.id, disabled_reason=None, failing_since=None)
        return False
    uow.endpoints.enable(current.id)
    return True


def _replay_missed(
    uow_factory: UnitOfWorkFactory, disabled: EndpointRecord, events_max: int, clock: Clock
) -> int:
    """After the enabling committed (so every posting from then on delivers to it), the
    events finalised while it was disabled. In a transaction of its own, so that postings
    are held back only while the enabling waits for those in flight, not for this scan.
    If it fails, `POST .../replay` with `since` = `disabled_at` does the same."""
    if disabled.disabled_at is None:
        return 0
    with uow_factory() as uow:
        created = uow.deliveries.add_missed(
            disabled.id, since=disabled.disabled_at, limit=events_max, now=clock()
        )
        uow.commit()
    if created >= events_max:
        log.warning(
            "webhook endpoint %s enabled: replay stopped at %d deliveries; POST its replay"
            " with since=%s for the rest",
            disabled.id,
            created,
            iso_utc(disabled.disabled_at),
        )
    return created


def replay_endpoint(
    uow_factory: UnitOfWorkFactory,
    endpoint_id: str,
    *,
    since: datetime,
    events_max: int,
    clock: Clock = utc_now,
) -> dict[str, Any] | Failure:
    """Create a delivery for every matching event recorded since `since` that the endpoint
    has none for, at most `events_max`, oldest first. Calling it again with the same
    `since` goes on where it stopped (what it created is no longer missing)."""
    with uow_factory() as uow:
        record = uow.endpoints.get(endpoint_id)
        if record is None:
            return _not_found("webhook_endpoint")
        if record.status != EndpointStatus.ENABLED.value:
            return Failure(
                "webhook_endpoint_disabled",
                "The endpoint is disabled: enable it (which replays what it missed while"
                " disabled), then replay.",
            )
        created = uow.deliveries.add_missed(endpoint_id, since=since, limit=events_max, now=clock())
        uow.commit()
    return {
        "object": "webhook_replay",
        "endpoint_id": endpoint_id,
        "since": iso_utc(since),
        "created": created,
        # The bound was reached: there may be more; call again with the same `since`.
        "more": created >= events_max,
    }


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

    def fetch(uow: UnitOfWork, after: str | None, n: int) -> list[DeliveryRecord] | Failure:
        if uow.endpoints.get(endpoint_id) is None:
            return _not_found("webhook_endpoint")
        return uow.deliveries.list_page(endpoint_id, after_id=after, limit=n)

    return read_page(uow_factory, cursor, limit, fetch)


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
    endpoint_concurrency_max: int,
    busy_retry_after_seconds: float,
    clock: Clock = utc_now,
    jitter: Callable[[], float] = lambda: random.uniform(-1, 1),  # noqa: S311 (not crypto)
    lease_token: Callable[[], str] = new_lease_token,
    metrics: Metrics = NULL_METRICS,
) -> DeliveryStatus | None:
    """Make one attempt if the delivery is due and unclaimed and its endpoint has a free
    slot; record its outcome, if this worker still holds the lease by then.

    Returns the delivery's new status, or None when there was nothing to do (not due,
    another worker holds it, its endpoint is at its concurrency cap) or the outcome was
    dropped (the lease passed to another worker)."""
    now = clock()
    with uow_factory() as uow:
        claimed = uow.deliveries.claim(
            delivery_id,
            now=now,
            lease_until=now + timedelta(seconds=lease_seconds),
            lease_token=lease_token(),
            endpoint_concurrency_max=endpoint_concurrency_max,
            busy_retry_at=now + timedelta(seconds=busy_retry_after_seconds),
        )
        if isinstance(claimed, EndpointBusy):
            uow.commit()
            metrics.webhook_attempt("endpoint_busy")
            return None
        if claimed is not None and (claimed.endpoint.status != EndpointStatus.ENABLED.value):
            uow.deliveries.abandon(delivery_id, error="endpoint_disabled")
            uow.commit()
            metrics.webhook_attempt("endpoint_disabled")
            return DeliveryStatus.ABANDONED
        uow.commit()
    if claimed is None:
        return None

    endpoint = claimed.endpoint
    try:
        result = sender.send(
            endpoint.url,
            message_id=claimed.event_id,
            payload=claimed.payload,
            secrets=signing_secrets(
                endpoint.secret, endpoint.previous_secret, endpoint.previous_secret_expires_at, now
            ),
            timestamp=now,
        )
    except Exception as error:
        # Every attempt ends recorded, so that a delivery is abandoned on its schedule;
        # an unrecorded one would be claimed again after its lease, forever.
        log.exception("webhook sender failed on %s", delivery_id)
        result = AttemptResult(None, f"internal_error: {type(error).__name__}", 0)
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
    def record() -> bool:
        with uow_factory() as uow:
            # The endpoint's row first, then the deliveries' (this one, and all of the
            # endpoint's if it is disabled): the order of every writer, so that two
            # attempts of one endpoint, one of them disabling it, never deadlock.
            uow.endpoints.lock(endpoint.id)
            if not uow.deliveries.record_attempt(
                delivery_id,
                attempted_at=now,
                status_code=result.status_code,
                error=result.error,
                duration_milliseconds=result.duration_milliseconds,
                decision=decision,
                lease_token=claimed.lease_token,
            ):
                return False
            if decision.status is DeliveryStatus.SUCCEEDED:
                uow.endpoints.record_success(endpoint.id, finished)
            else:
                uow.endpoints.record_failure(endpoint.id, finished)
            if decision.disable_endpoint is not None:
                uow.endpoints.disable(endpoint.id, reason=decision.disable_endpoint)
                uow.deliveries.abandon_for_endpoint(endpoint.id, error="endpoint_disabled")
            uow.commit()
        return True

    if not record():
        # Taken over after this lease expired: the newer attempt owns the outcome, and the
        # receiver drops this duplicate by its webhook-id.
        log.warning(
            "webhook attempt of %s dropped (%s): its lease passed to another worker",
            delivery_id,
            decision.status.value,
        )
        metrics.webhook_attempt("lease_lost")
        return None
    metrics.webhook_attempt(decision.status.value)
    if decision.disable_endpoint is not None:
        log.warning("webhook endpoint %s disabled: %s", endpoint.id, decision.disable_endpoint)
    return decision.status
