"""Webhook endpoints, their deliveries, and events (admin scope)."""

from __future__ import annotations

from flask import Blueprint, current_app, request
from flask.typing import ResponseReturnValue

from api import schemas
from api.operations import Call, operation, page_limit
from api.routes.results import to_http
from ledger_core.service_layer import webhooks
from ledger_core.service_layer.access import Scope

bp = Blueprint("webhooks", __name__)
PAGING = {"limit": "Page size, 1 to page_size_max.", "cursor": "next_cursor of the previous page."}
ENDPOINT = "/v1/webhook-endpoints/{endpoint_id}"


def _services():  # type: ignore[no-untyped-def]
    return current_app.extensions["ledger"]


@operation(
    bp,
    "POST",
    "/v1/webhook-endpoints",
    summary="Register a webhook endpoint; the response shows its signing secret once",
    scope=Scope.ADMIN,
    body=schemas.EndpointCreate,
    responses={201: schemas.Endpoint, 422: None},
)
def create_endpoint(call: Call) -> ResponseReturnValue:
    body: schemas.EndpointCreate = call.body
    services = _services()
    return to_http(
        webhooks.create_endpoint(
            services.uow_factory,
            services.url_guard,
            url=body.url,
            events=body.events,
            account_ids=body.account_ids,
            description=body.description,
        ),
        status=201,
    )


@operation(
    bp,
    "GET",
    "/v1/webhook-endpoints",
    summary="List webhook endpoints, oldest first",
    scope=Scope.ADMIN,
    responses={200: schemas.EndpointList},
    query=PAGING,
)
def list_endpoints(call: Call) -> ResponseReturnValue:
    return to_http(
        webhooks.list_endpoints(
            _services().uow_factory, cursor=request.args.get("cursor"), limit=page_limit()
        )
    )


@operation(
    bp,
    "GET",
    ENDPOINT,
    summary="Read a webhook endpoint",
    scope=Scope.ADMIN,
    responses={200: schemas.Endpoint, 404: None},
)
def get_endpoint(call: Call, endpoint_id: str) -> ResponseReturnValue:
    return to_http(webhooks.get_endpoint(_services().uow_factory, endpoint_id))


@operation(
    bp,
    "PATCH",
    ENDPOINT,
    summary="Change url, events, account_ids, description or status; enabling a disabled"
    " endpoint replays the events it missed while disabled",
    scope=Scope.ADMIN,
    body=schemas.EndpointUpdate,
    responses={200: schemas.Endpoint, 404: None, 422: None},
)
def update_endpoint(call: Call, endpoint_id: str) -> ResponseReturnValue:
    body: schemas.EndpointUpdate = call.body
    services = _services()
    return to_http(
        webhooks.update_endpoint(
            services.uow_factory,
            services.url_guard,
            endpoint_id,
            body.model_dump(exclude_unset=True),
            replay_events_max=services.settings.webhook_replay_events_max,
        )
    )


@operation(
    bp,
    "POST",
    ENDPOINT + "/replay",
    summary="Create a delivery, due now, for every matching event recorded since `since`"
    " that the endpoint has none for (at most WEBHOOK_REPLAY_EVENTS_MAX per call)",
    scope=Scope.ADMIN,
    body=schemas.ReplayRequest,
    responses={202: schemas.Replay, 404: None, 409: None, 422: None},
)
def replay_endpoint(call: Call, endpoint_id: str) -> ResponseReturnValue:
    body: schemas.ReplayRequest = call.body
    services = _services()
    return to_http(
        webhooks.replay_endpoint(
            services.uow_factory,
            endpoint_id,
            since=body.since,
            events_max=services.settings.webhook_replay_events_max,
        ),
        status=202,
    )


@operation(
    bp,
    "DELETE",
    ENDPOINT,
    summary="Delete a webhook endpoint; its pending deliveries are abandoned",
    scope=Scope.ADMIN,
    responses={200: None, 404: None},
)
def delete_endpoint(call: Call, endpoint_id: str) -> ResponseReturnValue:
    return to_http(webhooks.delete_endpoint(_services().uow_factory, endpoint_id))


@operation(
    bp,
    "POST",
    ENDPOINT + "/rotate-secret",
    summary="New signing secret; the old one also signs for 24 hours",
    scope=Scope.ADMIN,
    responses={200: schemas.SecretRotated, 404: None},
)
def rotate_secret(call: Call, endpoint_id: str) -> ResponseReturnValue:
    return to_http(webhooks.rotate_secret(_services().uow_factory, endpoint_id))


@operation(
    bp,
    "GET",
    ENDPOINT + "/deliveries",
    summary="List an endpoint's deliveries, oldest first",
    scope=Scope.ADMIN,
    responses={200: schemas.DeliveryList, 404: None},
    query=PAGING,
)
def list_deliveries(call: Call, endpoint_id: str) -> ResponseReturnValue:
    return to_http(
        webhooks.list_deliveries(
            _services().uow_factory,
            endpoint_id,
            cursor=request.args.get("cursor"),
            limit=page_limit(),
        )
    )


@operation(
    bp,
    "GET",
    "/v1/webhook-deliveries/{delivery_id}",
    summary="Read a delivery with the log of its attempts",
    scope=Scope.ADMIN,
    responses={200: schemas.Delivery, 404: None},
)
def get_delivery(call: Call, delivery_id: str) -> ResponseReturnValue:
    return to_http(webhooks.get_delivery(_services().uow_factory, delivery_id))


@operation(
    bp,
    "POST",
    "/v1/webhook-deliveries/{delivery_id}/retry",
    summary="Attempt a delivery again now (also an abandoned one)",
    scope=Scope.ADMIN,
    responses={202: schemas.Delivery, 404: None, 409: None},
)
def retry_delivery(call: Call, delivery_id: str) -> ResponseReturnValue:
    services = _services()
    return to_http(
        webhooks.retry_delivery(
            services.uow_factory,
            services.enqueue_deliveries,
            delivery_id,
            requeue_after_seconds=services.settings.webhook_requeue_after_seconds,
        ),
        status=202,
    )


@operation(
    bp,
    "GET",
    "/v1/events/{event_id}",
    summary="Read an event exactly as it is delivered",
    scope=Scope.ADMIN,
    responses={200: schemas.Event, 404: None},
)
def get_event(call: Call, event_id: str) -> ResponseReturnValue:
    return to_http(webhooks.get_event(_services().uow_factory, event_id))
