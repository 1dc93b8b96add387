"""Money moves end to end through the real API, broker, worker and database, exactly once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.conftest import wait_final
from tests.e2e.helpers import deposit, new_key, open_account, post_money

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("books")]
concurrent_clients = 32


def test_deposit_transfer_withdrawal_reach_posted_with_entries(
    client: httpx.Client, engine: Engine
) -> None:
    alice, bob = open_account(client, name="alice"), open_account(client, name="bob")
    accepted = deposit(client, alice["id"], 10_000)
    assert accepted["status"] == "pending"
    assert accepted["kind"] == "deposit"
    wait_final(engine, [accepted["id"]])

    moved = post_money(
        client,
        "/v1/transfers",
        {"source_account_id": alice["id"], "destination_account_id": bob["id"], "amount": 2_500},
    )
    assert moved.status_code == 202
    assert moved.headers["Location"] == f"/v1/transfers/{moved.json()['id']}"
    taken = post_money(client, "/v1/withdrawals", {"account_id": bob["id"], "amount": 500})
    wait_final(engine, [moved.json()["id"], taken.json()["id"]])

    transfer = client.get(moved.headers["Location"]).json()
    assert transfer["status"] == "posted"
    assert transfer["posted_at"] is not None
    assert transfer["rejection_reason"] is None
    assert client.get(f"/v1/accounts/{alice['id']}").json()["balance"] == {
        "posted": 7_500,
        "pending": 0,
        "available": 7_500,
    }
    assert client.get(f"/v1/accounts/{bob['id']}").json()["balance"]["posted"] == 2_000
    entries = client.get(f"/v1/accounts/{bob['id']}/entries").json()["data"]
    assert [(e["amount"], e["balance_after"]) for e in entries] == [(2_500, 2_500), (-500, 2_000)]


def test_overdraft_is_decided_by_the_worker(client: httpx.Client, engine: Engine) -> None:
    poor = open_account(client)
    response = post_money(client, "/v1/withdrawals", {"account_id": poor["id"], "amount": 1})
    assert response.status_code == 202
    wait_final(engine, [response.json()["id"]])
    transfer = client.get(f"/v1/transfers/{response.json()['id']}").json()
    assert (transfer["status"], transfer["rejection_reason"]) == ("rejected", "insufficient_funds")

    credit_line = open_account(client, allow_overdraft=True)
    response = post_money(client, "/v1/withdrawals", {"account_id": credit_line["id"], "amount": 7})
    wait_final(engine, [response.json()["id"]])
    assert client.get(f"/v1/accounts/{credit_line['id']}").json()["balance"]["posted"] == -7


def test_200_concurrent_transfers_from_an_account_funded_for_100(
    client: httpx.Client, engine: Engine
) -> None:
    amount = 300
    source, destination = open_account(client), open_account(client)
    wait_final(engine, [deposit(client, source["id"], 100 * amount)["id"]])

    def send(_: int) -> httpx.Response:
        return post_money(
            client,
            "/v1/transfers",
            {
                "source_account_id": source["id"],
                "destination_account_id": destination["id"],
                "amount": amount,
            },
        )

    with ThreadPoolExecutor(concurrent_clients) as pool:
        responses = list(pool.map(send, range(200)))
    assert [r.status_code for r in responses] == [202] * 200
    statuses = wait_final(engine, [r.json()["id"] for r in responses])

    assert sorted(statuses.values()).count("posted") == 100
    assert sorted(statuses.values()).count("rejected") == 100
    with engine.connect() as connection:
        reasons = connection.scalars(
            text("SELECT DISTINCT rejection_reason FROM transfers WHERE id = ANY(:ids)"),
            {"ids": [i for i, s in statuses.items() if s == "rejected"]},
        ).all()
    assert reasons == ["insufficient_funds"]
    assert client.get(f"/v1/accounts/{source['id']}").json()["balance"]["posted"] == 0
    assert (
        client.get(f"/v1/accounts/{destination['id']}").json()["balance"]["posted"] == 100 * amount
    )


def test_100_pairs_of_concurrent_requests_sharing_a_key_move_money_once_per_key(
    client: httpx.Client, engine: Engine
) -> None:
    account = open_account(client)
    keys = [new_key() for _ in range(100)]

    def send(key: str) -> httpx.Response:
        return post_money(client, "/v1/deposits", {"account_id": account["id"], "amount": 1}, key)

    with ThreadPoolExecutor(concurrent_clients) as pool:
        responses = list(pool.map(send, [k for k in keys for _ in range(2)]))

    assert all(r.status_code < 500 for r in responses)
    pairs = [responses[i : i + 2] for i in range(0, 200, 2)]
    for first, second in pairs:
        assert (first.status_code, second.status_code) == (202, 202)
        assert first.json() == second.json()
        replayed = {
            first.headers.get("Idempotent-Replayed"),
            second.headers.get("Idempotent-Replayed"),
        }
        assert replayed == {None, "true"}
    transfer_ids = {first.json()["id"] for first, _ in pairs}
    assert len(transfer_ids) == 100
    wait_final(engine, list(transfer_ids))
    with engine.connect() as connection:
        count = connection.scalar(
            text("SELECT count(*) FROM transfers WHERE destination_account_id = :a"),
            {"a": account["id"]},
        )
    assert count == 100
    assert client.get(f"/v1/accounts/{account['id']}").json()["balance"]["posted"] == 100


def test_pending_balance_counts_accepted_transfers(
    client: httpx.Client, engine: Engine, uow_factory: Any
) -> None:
    """While a transfer waits behind a lock, balances show it as pending, not posted."""
    source, destination = open_account(client), open_account(client)
    wait_final(engine, [deposit(client, source["id"], 1_000)["id"]])
    with engine.connect() as blocker:
        # Holding the source's row lock (the strength the worker takes) keeps the worker
        # from posting until we roll back, while the API can still accept.
        blocker.execute(
            text("SELECT 1 FROM accounts WHERE id = :id FOR NO KEY UPDATE"), {"id": source["id"]}
        )
        response = post_money(
            client,
            "/v1/transfers",
            {
                "source_account_id": source["id"],
                "destination_account_id": destination["id"],
                "amount": 400,
            },
        )
        balance = client.get(f"/v1/accounts/{source['id']}").json()["balance"]
        assert balance == {"posted": 1_000, "pending": -400, "available": 600}
        incoming = client.get(f"/v1/accounts/{destination['id']}").json()["balance"]
        assert incoming == {"posted": 0, "pending": 400, "available": 0}
        blocker.rollback()
    wait_final(engine, [response.json()["id"]])
    assert client.get(f"/v1/accounts/{destination['id']}").json()["balance"]["available"] == 400


def test_paging_returns_every_entry_and_account_once(client: httpx.Client, engine: Engine) -> None:
    account = open_account(client)
    ids = [deposit(client, account["id"], amount)["id"] for amount in range(1, 8)]
    wait_final(engine, ids)
    seen: list[dict[str, Any]] = []
    cursor = None
    for _ in range(10):  # 7 entries at 2 a page: 4 pages; the bound stops a broken cursor
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"/v1/accounts/{account['id']}/entries", params=params).json()
        seen += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # Posting order, which two worker processes may make differ from acceptance order.
    assert sorted(e["transfer_id"] for e in seen) == sorted(ids)
    running = 0
    for entry in seen:
        running += entry["amount"]
        assert entry["balance_after"] == running
    assert running == 28

    opened = {open_account(client)["id"] for _ in range(5)}
    listed: list[str] = []
    cursor = None
    for _ in range(1000):
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/accounts", params=params).json()
        listed += [a["id"] for a in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(listed) == len(set(listed))
    assert opened <= set(listed)
    assert listed == sorted(listed)


def test_account_creation_replays_with_an_idempotency_key(client: httpx.Client) -> None:
    headers = {"Idempotency-Key": new_key()}
    body = {"currency": "EUR", "name": "once", "metadata": {"ref": "42"}}
    first = client.post("/v1/accounts", json=body, headers=headers)
    again = client.post("/v1/accounts", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    other = client.post("/v1/accounts", json={**body, "name": "twice"}, headers=headers)
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
