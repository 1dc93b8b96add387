"""The request and response models say what the core does: one list of event types,
one list of movement kinds."""

from __future__ import annotations

from typing import get_args

from api import schemas
from ledger_core.domain.model import TransferKind
from ledger_core.domain.webhooks import EVENT_TYPES, EventType


def test_the_event_types_an_endpoint_can_filter_on_are_the_core_s() -> None:
    assert set(get_args(schemas.EventTypeName)) == {e.value for e in EventType}
    # And every one of them is sent by some (kind, status).
    assert set(EVENT_TYPES.values()) == set(EventType)


def test_every_movement_kind_is_shown() -> None:
    assert set(get_args(schemas.MovementKind)) == {k.value for k in TransferKind}


def test_a_transaction_refuses_fewer_than_two_entries() -> None:
    one = {"entries": [{"account_id": "acc_a", "amount": -1}]}
    try:
        schemas.TransactionCreate.model_validate(one)
    except ValueError as error:
        assert "entries" in str(error)
    else:
        raise AssertionError("a transaction of one entry was accepted")
