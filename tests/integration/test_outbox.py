"""The posting statement writes the webhook outbox in SQL; it must agree with the domain's
reference: each event's payload is `event_payload` of the final transfer (as the API shows
it), and deliveries go exactly to the endpoints `endpoint_matches` selects."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, text

from ledger_core.domain.model import TransferKind
from ledger_core.domain.records import EndpointRecord
from ledger_core.domain.webhooks import endpoint_matches
from ledger_core.service_layer import accept, posting, webhooks
from ledger_core.service_layer.ports import NullIdempotencyCache
from tests.support.books import Books


class AllowAll:
    def check(self, url: str) -> None:
        return None


def _endpoint(uow_factory: Any, **fields: Any) -> str:
    created = webhooks.create_endpoint(
        uow_factory,
        AllowAll(),
        url="https://receiver.example/hooks",
        events=fields.get("events"),
        account_ids=fields.get("account_ids"),
        description=None,
    )
    assert isinstance(created, dict)
    return str(created["id"])


def test_events_and_deliveries_match_the_domain_reference(uow_factory: Any, engine: Engine) -> None:
    books = Books(uow_factory, name="outbox")
    alice, bob, other = books.open_account(), books.open_account(), books.open_account()
    endpoints = [
        _endpoint(uow_factory),
        _endpoint(uow_factory, events=["transfer.posted"]),
        _endpoint(uow_factory, events=["transfer.rejected"]),
        _endpoint(uow_factory, account_ids=[alice]),
        _endpoint(uow_factory, account_ids=[other]),
        _endpoint(uow_factory, account_ids=[bob, other], events=["transfer.posted"]),
    ]
    disabled, deleted = _endpoint(uow_factory), _endpoint(uow_factory)
    webhooks.update_endpoint(uow_factory, AllowAll(), disabled, {"status": "disabled"})
    webhooks.delete_endpoint(uow_factory, deleted)

    response = accept.accept_transfer(
        uow_factory,
        NullIdempotencyCache(),
        lambda shard: None,
        api_key_id=books.key_id,
        idempotency_key="outbox-deposit",
        request_hash="h",
        request=accept.MovementRequest(
            TransferKind.DEPOSIT, None, alice, 70, 'a "quoted" note', {"order": "o-1", "x": "é"}
        ),
    )
    deposit = response.body["id"]
    move = books.accept(TransferKind.TRANSFER, alice, bob, 30)
    too_much = books.accept(TransferKind.TRANSFER, bob, alice, 1_000)
    posting.post_transfers(uow_factory, [deposit, move, too_much])

    with uow_factory() as uow:
        enabled = {e.id: e for e in uow.endpoints.enabled()}
    assert disabled not in enabled and deleted not in enabled
    for transfer_id in (deposit, move, too_much):
        final = accept.get_transfer(uow_factory, transfer_id)
        assert isinstance(final, dict)
        with engine.connect() as connection:
            event = connection.execute(
                text("SELECT id, type, payload, created_at FROM events WHERE transfer_id = :t"),
                {"t": transfer_id},
            ).one()
            delivered_to = set(
                connection.scalars(
                    text("SELECT endpoint_id FROM webhook_deliveries WHERE event_id = :e"),
                    {"e": event.id},
                )
            )
        payload = json.loads(event.payload)
        assert payload["data"] == final  # what the API shows, field for field
        assert list(payload["data"]) == list(final)  # and in the same order
        assert payload["id"] == event.id
        assert payload["type"] == event.type == f"transfer.{final['status']}"
        accounts = {final["source_account_id"], final["destination_account_id"]}
        expected = {
            endpoint_id
            for endpoint_id in endpoints
            if endpoint_id in enabled
            and endpoint_matches(enabled[endpoint_id], event.type, accounts)
        }
        assert delivered_to == expected, transfer_id
    assert isinstance(next(iter(enabled.values())), EndpointRecord)
    # Clean up: later tests post with no endpoint of theirs in the way.
    for endpoint_id in endpoints:
        webhooks.delete_endpoint(uow_factory, endpoint_id)


def test_every_event_and_delivery_of_a_batch_gets_its_own_id(
    uow_factory: Any, engine: Engine
) -> None:
    books = Books(uow_factory, name="outbox-ids")
    source = books.open_account(allow_overdraft=True)
    destination = books.open_account()
    endpoints = [_endpoint(uow_factory, account_ids=[destination]) for _ in range(3)]
    ids = [books.accept(TransferKind.TRANSFER, source, destination, 1) for _ in range(200)]
    outcomes = posting.post_transfers(uow_factory, ids)
    assert len(outcomes) == 200  # one claim, one statement
    with engine.connect() as connection:
        events = connection.execute(
            text("SELECT id, payload FROM events WHERE transfer_id = ANY(:ids)"), {"ids": ids}
        ).all()
        deliveries = connection.scalar(
            text(
                "SELECT count(DISTINCT d.id) FROM webhook_deliveries d"
                " JOIN events e ON e.id = d.event_id WHERE e.transfer_id = ANY(:ids)"
            ),
            {"ids": ids},
        )
    assert len({event.id for event in events}) == 200
    assert all(json.loads(event.payload)["id"] == event.id for event in events)
    assert deliveries == 200 * len(endpoints)
    for endpoint_id in endpoints:
        webhooks.delete_endpoint(uow_factory, endpoint_id)
