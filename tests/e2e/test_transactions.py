"""Ledger transactions of N entries, end to end: accepted PENDING, posted all or nothing by
the worker, read with their entries; every movement appears in the same listing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.conftest import wait_final
from tests.e2e.helpers import accepted, balance, deposit, funded, new_key, open_account, post_money

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("books")]


def entries_of(body: dict[str, Any]) -> list[tuple[str, int]]:
    return [(e["account_id"], e["amount"]) for e in body["entries"]]


def test_a_transaction_of_five_entries_posts_atomically(
    client: httpx.Client, engine: Engine
) -> None:
    payer = funded(client, engine, 1_000)
    a, b, c = (open_account(client)["id"] for _ in range(3))
    planned = [(payer["id"], -600), (a, 100), (b, 200), (c, 250), (a, 50)]
    body = {
        "entries": [{"account_id": i, "amount": m} for i, m in planned],
        "description": "split",
        "metadata": {"order": "42"},
        "effective_at": "2026-11-30T12:00:00+01:00",
    }
    response = post_money(client, "/v1/transactions", body)
    assert response.status_code == 202, response.text
    txn = response.json()
    assert response.headers["Location"] == f"/v1/transactions/{txn['id']}"
    assert (txn["object"], txn["kind"], txn["status"]) == ("transaction", "transaction", "pending")
    assert (txn["amount"], txn["currency"]) == (600, "USD")
    assert entries_of(txn) == planned
    assert all(e["balance_after"] is None for e in txn["entries"])
    assert txn["effective_at"] == "2026-11-30T11:00:00.000000Z"  # kept, in UTC
    wait_final(engine, [txn["id"]])

    posted = client.get(f"/v1/transactions/{txn['id']}").json()
    assert posted["status"] == "posted" and posted["posted_at"] is not None
    assert entries_of(posted) == planned
    # The same account twice: its two entries, each with the balance it left.
    assert [e["balance_after"] for e in posted["entries"]] == [400, 100, 200, 250, 150]
    assert balance(client, a)["posted"] == 150
    assert balance(client, payer["id"]) == {"posted": 400, "pending": 0, "available": 400}


def test_a_transaction_across_two_currencies_balances_each(
    client: httpx.Client, engine: Engine
) -> None:
    usd_from = funded(client, engine, 500)
    usd_to = open_account(client)
    eur_from = open_account(client, "EUR", allow_overdraft=True)
    eur_to = open_account(client, "EUR")
    body = {
        "entries": [
            {"account_id": usd_from["id"], "amount": -500},
            {"account_id": usd_to["id"], "amount": 500},
            {"account_id": eur_from["id"], "amount": -460},
            {"account_id": eur_to["id"], "amount": 460},
        ]
    }
    txn = accepted(client, "/v1/transactions", body)
    assert txn["currency"] is None  # across currencies
    assert [e["currency"] for e in txn["entries"]] == ["USD", "USD", "EUR", "EUR"]
    wait_final(engine, [txn["id"]])
    assert client.get(f"/v1/transactions/{txn['id']}").json()["status"] == "posted"
    assert balance(client, eur_to["id"])["posted"] == 460
    assert balance(client, usd_to["id"])["posted"] == 500


def test_one_short_debit_rejects_every_entry_and_names_its_account(
    client: httpx.Client, engine: Engine
) -> None:
    rich, poor = funded(client, engine, 1_000), funded(client, engine, 10)
    sink = open_account(client)
    body = {
        "entries": [
            {"account_id": rich["id"], "amount": -500},
            {"account_id": poor["id"], "amount": -11},
            {"account_id": sink["id"], "amount": 511},
        ]
    }
    txn = accepted(client, "/v1/transactions", body)
    wait_final(engine, [txn["id"]])
    rejected = client.get(f"/v1/transactions/{txn['id']}").json()
    assert (rejected["status"], rejected["rejection_reason"]) == ("rejected", "insufficient_funds")
    assert rejected["rejected_account_id"] == poor["id"]
    assert all(e["balance_after"] is None for e in rejected["entries"])
    assert [balance(client, x["id"])["posted"] for x in (rich, poor, sink)] == [1_000, 10, 0]
    with engine.connect() as connection:
        count = connection.execute(
            text("SELECT count(*) FROM entries WHERE transfer_id = :id"), {"id": txn["id"]}
        ).scalar()
    assert count == 0


def test_credits_count_before_debits_within_a_transaction(
    client: httpx.Client, engine: Engine
) -> None:
    # The middle account has nothing: it receives 300 and pays 300 in the same posting.
    start, middle, end = funded(client, engine, 300), open_account(client), open_account(client)
    body = {
        "entries": [
            {"account_id": middle["id"], "amount": -300},
            {"account_id": end["id"], "amount": 300},
            {"account_id": start["id"], "amount": -300},
            {"account_id": middle["id"], "amount": 300},
        ]
    }
    txn = accepted(client, "/v1/transactions", body)
    wait_final(engine, [txn["id"]])
    assert client.get(f"/v1/transactions/{txn['id']}").json()["status"] == "posted"
    assert [balance(client, x["id"])["posted"] for x in (start, middle, end)] == [0, 0, 300]


def test_concurrent_transactions_on_shared_accounts_never_overdraw(
    client: httpx.Client, engine: Engine
) -> None:
    # 40 transactions of 3 entries each take 25 from one of two funded accounts and pay
    # two others: exactly what the funds allow posts, in any interleaving.
    first, second = funded(client, engine, 250), funded(client, engine, 250)
    sinks = [open_account(client)["id"] for _ in range(2)]

    def send(i: int) -> str:
        payer = (first, second)[i % 2]["id"]
        body = {
            "entries": [
                {"account_id": payer, "amount": -25},
                {"account_id": sinks[0], "amount": 10},
                {"account_id": sinks[1], "amount": 15},
            ]
        }
        return str(accepted(client, "/v1/transactions", body)["id"])

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(send, range(40)))
    statuses = wait_final(engine, ids)
    assert sorted(statuses.values()).count("posted") == 20
    assert balance(client, first["id"])["posted"] == 0
    assert balance(client, second["id"])["posted"] == 0
    assert [balance(client, s)["posted"] for s in sinks] == [200, 300]


def test_every_movement_is_listed_as_a_transaction(client: httpx.Client, engine: Engine) -> None:
    account, other = open_account(client), open_account(client)
    made = [deposit(client, account["id"], 70)["id"]]
    made.append(
        accepted(
            client,
            "/v1/transfers",
            {
                "source_account_id": account["id"],
                "destination_account_id": other["id"],
                "amount": 20,
            },
        )["id"]
    )
    body = {
        "entries": [
            {"account_id": account["id"], "amount": -5},
            {"account_id": other["id"], "amount": 5},
        ]
    }
    made.append(accepted(client, "/v1/transactions", body)["id"])
    wait_final(engine, made)
    seen: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    for _ in range(1_000):  # bounded: the shared test database holds fewer pages
        params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/transactions", params=params).json()
        seen |= {t["id"]: t for t in page["data"]}
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [seen[i]["kind"] for i in made] == ["deposit", "transfer", "transaction"]
    assert entries_of(seen[made[1]]) == [(account["id"], -20), (other["id"], 20)]
    assert [e["balance_after"] for e in seen[made[1]]["entries"]] == [50, 20]
    # A transfer read as a transfer keeps its own shape.
    transfer = client.get(f"/v1/transfers/{made[1]}").json()
    assert (transfer["object"], transfer["source_account_id"]) == ("transfer", account["id"])


def test_a_replayed_transaction_is_the_same_transaction(
    client: httpx.Client, engine: Engine
) -> None:
    payer, payee = funded(client, engine, 10), open_account(client)
    body = {
        "entries": [
            {"account_id": payer["id"], "amount": -10},
            {"account_id": payee["id"], "amount": 10},
        ]
    }
    key = new_key()
    first = post_money(client, "/v1/transactions", body, key)
    wait_final(engine, [first.json()["id"]])
    again = post_money(client, "/v1/transactions", body, key)
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert balance(client, payee["id"])["posted"] == 10
