"""The posting statement writes the webhook outbox in SQL; it must agree with the domain's
reference: each event's payload is `event_payload` of the final transfer (as the API shows
it), and deliveries go exactly to the endpoints `endpoint_matches` selects."""

from __future__ import annotations

import json
import secrets
from typing import Any

from sqlalchemy import Engine, text

from ledger_core.domain.model import Leg, TransferKind
from ledger_core.domain.records import EndpointRecord
from ledger_core.domain.webhooks import endpoint_matches
from ledger_core.service_layer import accept, movements, posting, reads, webhooks
from ledger_core.service_layer.errors import Response
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
    webhooks.update_endpoint(
        uow_factory, AllowAll(), disabled, {"status": "disabled"}, replay_events_max=10
    )
    webhooks.delete_endpoint(uow_factory, deleted)

    response = accept.accept_transfer(
        uow_factory,
        NullIdempotencyCache(),
        lambda shard: None,
        api_key=books.key,
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


def test_events_of_every_other_movement_are_the_transaction_the_api_shows(
    uow_factory: Any, engine: Engine
) -> None:
    """Transactions, holds and their actions, payments and reversals: the worker builds
    their payloads (not the posting statement); each must be what GET /v1/transactions
    shows, and go to the endpoints that match its type and any of its accounts."""
    books = Books(uow_factory, name="outbox-movements")
    alice, bob, carol = books.open_account(), books.open_account(), books.open_account()
    books.move(TransferKind.DEPOSIT, None, alice, 1_000)
    endpoints = [
        _endpoint(uow_factory),
        _endpoint(uow_factory, events=["transaction.posted"]),
        _endpoint(uow_factory, events=["hold.created", "hold.captured"]),
        _endpoint(uow_factory, account_ids=[carol]),
        _endpoint(uow_factory, account_ids=[bob], events=["transfer.reversed"]),
    ]

    def keyed() -> movements.Keyed:
        return movements.Keyed(books.key, secrets.token_hex(8), "h")

    def accepted(result: Any) -> str:
        assert isinstance(result, Response), result
        return str(result.body["id"])

    no_cache, no_wake = NullIdempotencyCache(), lambda shard: None

    def transaction(*legs: tuple[str, int]) -> str:
        return accepted(
            movements.accept_transaction(
                uow_factory,
                no_cache,
                no_wake,
                keyed=keyed(),
                legs=[Leg(a, m) for a, m in legs],
                description="split",
                metadata={"k": "v"},
                effective_at=None,
            )
        )

    split = transaction((alice, -300), (bob, 100), (carol, 200))
    short = transaction((bob, -5_000), (carol, 5_000))
    hold = accepted(
        movements.accept_hold(
            uow_factory,
            no_cache,
            no_wake,
            keyed=keyed(),
            source_account_id=alice,
            destination_account_id=bob,
            amount=50,
            expires_in_seconds=None,
            description=None,
            metadata={},
        )
    )
    posting.post_transfers(uow_factory, [split, short, hold])
    capture = accepted(
        movements.act_on_hold(
            uow_factory, no_cache, no_wake, keyed=keyed(), hold_id=hold, kind=TransferKind.CAPTURE
        )
    )
    refund = accepted(
        movements.reverse(
            uow_factory,
            no_cache,
            no_wake,
            keyed=keyed(),
            original_id=split,
            amount=None,
            reason="refund",
        )
    )
    posting.post_transfers(uow_factory, [capture, refund])

    with uow_factory() as uow:
        enabled = {e.id: e for e in uow.endpoints.enabled()}
    seen_types = []
    for movement_id in (split, short, hold, capture, refund):
        final = reads.get_transaction(uow_factory, movement_id)
        assert isinstance(final, dict)
        # An event is the movement as it was when final, before anything reversed it.
        final |= {"reversed_amount": 0, "reversed_by_ids": []}
        with engine.connect() as connection:
            event = connection.execute(
                text("SELECT id, type, payload FROM events WHERE transfer_id = :t"),
                {"t": movement_id},
            ).one()
            delivered_to = set(
                connection.scalars(
                    text("SELECT endpoint_id FROM webhook_deliveries WHERE event_id = :e"),
                    {"e": event.id},
                )
            )
        payload = json.loads(event.payload)
        assert payload["data"] == final, movement_id  # field for field
        assert list(payload["data"]) == list(final)
        assert payload["id"] == event.id and payload["type"] == event.type
        seen_types.append(event.type)
        accounts = {entry["account_id"] for entry in final["entries"]}
        if not accounts:  # a hold posts no entry: its accounts are the hold's
            accounts = {alice, bob}
        expected = {
            endpoint_id
            for endpoint_id in endpoints
            if endpoint_matches(enabled[endpoint_id], event.type, accounts)
        }
        assert delivered_to == expected, (movement_id, event.type)
    assert seen_types == [
        "transaction.posted",
        "transaction.rejected",
        "hold.created",
        "hold.captured",
        "transfer.reversed",
    ]
    for endpoint_id in endpoints:
        webhooks.delete_endpoint(uow_factory, endpoint_id)
