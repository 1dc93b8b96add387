"""Batches through the real API and workers: each item has its own outcome in acceptance
order with exact balance_after, an atomic batch posts whole or leaves no entry, and a
batch can be polled and replayed."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.conftest import wait_final
from tests.e2e.helpers import deposit, new_key, open_account, post_money

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("books")]


def move(source: str, destination: str, amount: int) -> dict[str, Any]:
    return {
        "kind": "transfer",
        "source_account_id": source,
        "destination_account_id": destination,
        "amount": amount,
    }


def send_batch(client: httpx.Client, items: list[dict[str, Any]], **fields: Any) -> httpx.Response:
    return post_money(client, "/v1/transfers/batch", {"items": items, **fields})


def entries(client: httpx.Client, account_id: str) -> list[tuple[str, int, int]]:
    data = client.get(f"/v1/accounts/{account_id}/entries", params={"limit": 200}).json()["data"]
    return [(e["transfer_id"], e["amount"], e["balance_after"]) for e in data]


def test_a_mixed_batch_posts_the_good_items_in_order_and_rejects_the_rest(
    client: httpx.Client, engine: Engine
) -> None:
    alice, bob = open_account(client), open_account(client)
    wait_final(engine, [deposit(client, alice["id"], 1_000)["id"]])
    items = [
        move(alice["id"], bob["id"], 400),  # 600 left
        move(alice["id"], bob["id"], 700),  # more than is left: rejected
        move(alice["id"], bob["id"], 600),  # exactly what is left
        {"kind": "deposit", "account_id": bob["id"], "amount": 5},
        move(alice["id"], bob["id"], 1),  # nothing left
        {"kind": "withdrawal", "account_id": bob["id"], "amount": 5},
    ]
    response = send_batch(client, items)
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["status"] == "pending"
    assert [item["status"] for item in batch["items"]] == ["pending"] * 6
    ids = [item["id"] for item in batch["items"]]
    wait_final(engine, ids)

    polled = client.get(f"/v1/transfers/batch/{batch['id']}").json()
    assert polled["status"] == "completed"
    assert [item["status"] for item in polled["items"]] == [
        "posted",
        "rejected",
        "posted",
        "posted",
        "rejected",
        "posted",
    ]
    assert polled["counts"] == {"pending": 0, "posted": 4, "rejected": 2, "quarantined": 0}
    assert polled["items"][1]["rejection_reason"] == "insufficient_funds"
    assert client.get(f"/v1/transfers/{ids[4]}").json()["batch_id"] == batch["id"]
    # Each entry's balance_after is the balance the transfers before it left.
    assert entries(client, alice["id"])[1:] == [(ids[0], -400, 600), (ids[2], -600, 0)]
    assert entries(client, bob["id"]) == [
        (ids[0], 400, 400),
        (ids[2], 600, 1_000),
        (ids[3], 5, 1_005),
        (ids[5], -5, 1_000),
    ]


def test_an_atomic_batch_with_a_failing_item_leaves_no_entry(
    client: httpx.Client, engine: Engine
) -> None:
    alice, bob, carol = open_account(client), open_account(client), open_account(client)
    wait_final(engine, [deposit(client, alice["id"], 100)["id"]])
    items = [
        {"kind": "deposit", "account_id": carol["id"], "amount": 7},
        move(alice["id"], bob["id"], 60),
        move(alice["id"], bob["id"], 60),  # 40 left after the one before: fails
        move(bob["id"], carol["id"], 10),
    ]
    atomic = send_batch(client, items, atomic=True).json()
    ids = [item["id"] for item in atomic["items"]]
    wait_final(engine, ids)
    polled = client.get(f"/v1/transfers/batch/{atomic['id']}").json()
    assert polled["atomic"] is True
    assert [(i["status"], i["rejection_reason"]) for i in polled["items"]] == [
        ("rejected", "linked_transfer_failed"),
        ("rejected", "linked_transfer_failed"),
        ("rejected", "insufficient_funds"),
        ("rejected", "linked_transfer_failed"),
    ]
    with engine.connect() as connection:
        count = connection.scalar(
            text("SELECT count(*) FROM entries WHERE transfer_id = ANY(:ids)"), {"ids": ids}
        )
    assert count == 0
    for account, posted in ((alice, 100), (bob, 0), (carol, 0)):
        assert client.get(f"/v1/accounts/{account['id']}").json()["balance"]["posted"] == posted

    # The same items without `atomic`: each succeeds or fails on its own.
    loose = send_batch(client, items).json()
    loose_ids = [item["id"] for item in loose["items"]]
    statuses = wait_final(engine, loose_ids)
    assert [statuses[i] for i in loose_ids] == ["posted", "posted", "rejected", "posted"]
    for account, posted in ((alice, 40), (bob, 50), (carol, 17)):
        assert client.get(f"/v1/accounts/{account['id']}").json()["balance"]["posted"] == posted


def test_an_atomic_batch_that_can_post_posts_every_item(
    client: httpx.Client, engine: Engine
) -> None:
    alice, bob = open_account(client), open_account(client)
    items = [
        {"kind": "deposit", "account_id": alice["id"], "amount": 50},
        move(alice["id"], bob["id"], 50),  # funded by the item before it
        {"kind": "withdrawal", "account_id": bob["id"], "amount": 20},
    ]
    batch = send_batch(client, items, atomic=True).json()
    statuses = wait_final(engine, [item["id"] for item in batch["items"]])
    assert set(statuses.values()) == {"posted"}
    assert client.get(f"/v1/accounts/{bob['id']}").json()["balance"]["posted"] == 30


def test_a_batch_replays_under_its_key(client: httpx.Client, engine: Engine) -> None:
    account = open_account(client)
    headers = {"Idempotency-Key": new_key()}
    body = {"items": [{"kind": "deposit", "account_id": account["id"], "amount": 3}] * 3}
    first = client.post("/v1/transfers/batch", json=body, headers=headers)
    assert first.status_code == 202
    wait_final(engine, [item["id"] for item in first.json()["items"]])
    again = client.post("/v1/transfers/batch", json=body, headers=headers)
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()  # the first answer, items pending as they were
    other = client.post("/v1/transfers/batch", json={**body, "atomic": True}, headers=headers)
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    assert client.get(f"/v1/accounts/{account['id']}").json()["balance"]["posted"] == 9
    assert client.get("/v1/transfers/batch/bat_missing").status_code == 404
