"""Reversals end to end: the opposite entries as a new movement, linked both ways, in
whole or in part, never more than the original, subject to the overdraft rule."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.conftest import wait_final
from tests.e2e.helpers import accepted, balance, funded, new_key, open_account, post_money

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("books")]


def transfer(client: httpx.Client, source: str, destination: str, amount: int) -> dict[str, Any]:
    body = {"source_account_id": source, "destination_account_id": destination, "amount": amount}
    return accepted(client, "/v1/transfers", body)


def test_a_partial_then_the_rest_reverse_a_transfer_linked_both_ways(
    client: httpx.Client, engine: Engine
) -> None:
    alice, bob = funded(client, engine, 1_000), open_account(client)
    original = transfer(client, alice["id"], bob["id"], 600)
    wait_final(engine, [original["id"]])
    part = post_money(
        client, f"/v1/transfers/{original['id']}/reverse", {"amount": 200, "reason": "refund"}
    )
    assert part.status_code == 202, part.text
    reversal = part.json()
    assert (reversal["kind"], reversal["reverses_id"], reversal["amount"]) == (
        "reversal",
        original["id"],
        200,
    )
    assert [(e["account_id"], e["amount"]) for e in reversal["entries"]] == [
        (alice["id"], 200),
        (bob["id"], -200),
    ]
    wait_final(engine, [reversal["id"]])
    rest = accepted(client, f"/v1/transfers/{original['id']}/reverse", {})
    assert rest["amount"] == 400
    wait_final(engine, [rest["id"]])
    seen = client.get(f"/v1/transactions/{original['id']}").json()
    assert seen["reversed_amount"] == 600
    assert seen["reversed_by_ids"] == sorted([reversal["id"], rest["id"]])
    assert [balance(client, x["id"])["posted"] for x in (alice, bob)] == [1_000, 0]
    over = post_money(client, f"/v1/transfers/{original['id']}/reverse", {"amount": 1})
    assert (over.status_code, over.json()["code"]) == (422, "reversal_exceeds_original")
    with engine.connect() as connection:
        events = connection.execute(
            text("SELECT type FROM events WHERE transfer_id = :id"), {"id": rest["id"]}
        ).scalar()
    assert events == "transfer.reversed"


def test_concurrent_partial_reversals_never_exceed_the_original(
    client: httpx.Client, engine: Engine
) -> None:
    payer, payee = funded(client, engine, 100), funded(client, engine, 1_000)
    original = transfer(client, payer["id"], payee["id"], 100)
    wait_final(engine, [original["id"]])

    def send(_: int) -> tuple[int, str | None]:
        response = post_money(client, f"/v1/transfers/{original['id']}/reverse", {"amount": 7})
        return response.status_code, response.json().get("id")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, range(40)))
    assert {status for status, _ in results} <= {202, 422}
    ids = [i for status, i in results if status == 202 and i is not None]
    statuses = wait_final(engine, ids)
    posted = sum(status == "posted" for status in statuses.values())
    # 14 reversals of 7 fit in 100; the 15th would make 105. Accepted one at a time under
    # the original's lock, counting those still pending: no 15th is even accepted.
    assert len(ids) == 14
    assert posted == 14
    assert client.get(f"/v1/transactions/{original['id']}").json()["reversed_amount"] == 98
    assert balance(client, payer["id"])["posted"] == 98
    rejected = [i for i, s in statuses.items() if s == "rejected"]
    assert rejected == []
    for rejected_id in rejected:
        body = client.get(f"/v1/transactions/{rejected_id}").json()
        assert body["rejection_reason"] == "reversal_exceeds_original"


def test_reversing_twice_with_one_key_replays(client: httpx.Client, engine: Engine) -> None:
    payer, payee = funded(client, engine, 50), open_account(client)
    original = transfer(client, payer["id"], payee["id"], 50)
    wait_final(engine, [original["id"]])
    key = new_key()
    first = post_money(client, f"/v1/transfers/{original['id']}/reverse", {"amount": 10}, key)
    wait_final(engine, [first.json()["id"]])
    again = post_money(client, f"/v1/transfers/{original['id']}/reverse", {"amount": 10}, key)
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert client.get(f"/v1/transfers/{original['id']}").json()["status"] == "posted"
    assert balance(client, payer["id"])["posted"] == 10
    other = post_money(client, f"/v1/transfers/{original['id']}/reverse", {"amount": 11}, key)
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")


def test_a_refund_from_a_merchant_who_spent_the_money_is_rejected(
    client: httpx.Client, engine: Engine
) -> None:
    customer, merchant = funded(client, engine, 300), open_account(client)
    payment = accepted(
        client,
        "/v1/payments",
        {
            "customer_account_id": customer["id"],
            "merchant_account_id": merchant["id"],
            "amount": 300,
        },
    )
    wait_final(engine, [payment["id"]])
    spent = accepted(client, "/v1/withdrawals", {"account_id": merchant["id"], "amount": 250})
    wait_final(engine, [spent["id"]])
    refund = accepted(client, f"/v1/payments/{payment['id']}/reverse", {"amount": 100})
    wait_final(engine, [refund["id"]])
    body = client.get(f"/v1/transactions/{refund['id']}").json()
    assert (body["status"], body["rejection_reason"]) == ("rejected", "insufficient_funds")
    assert body["rejected_account_id"] == merchant["id"]
    assert client.get(f"/v1/payments/{payment['id']}").json()["reversed_amount"] == 0
    small = accepted(client, f"/v1/payments/{payment['id']}/reverse", {"amount": 50})
    wait_final(engine, [small["id"]])
    assert client.get(f"/v1/payments/{payment['id']}").json()["reversed_amount"] == 50
    assert [balance(client, x["id"])["posted"] for x in (customer, merchant)] == [50, 0]


def test_a_partial_refund_of_a_payment_claws_back_its_cashback_in_proportion(
    client: httpx.Client, engine: Engine
) -> None:
    customer, rewards = funded(client, engine, 1_000), funded(client, engine, 100)
    merchant = open_account(client)
    body = {
        "customer_account_id": customer["id"],
        "merchant_account_id": merchant["id"],
        "amount": 1_000,
        "cashback": {"rewards_account_id": rewards["id"], "basis_points": 1_000},
    }
    payment = accepted(client, "/v1/payments", body)
    wait_final(engine, [payment["id"]])
    refund = accepted(client, f"/v1/payments/{payment['id']}/reverse", {"amount": 250})
    wait_final(engine, [refund["id"]])
    assert client.get(f"/v1/transactions/{refund['id']}").json()["status"] == "posted"
    # Paid 1000 and got 100 back; refunded 250 and gave back 25 of the cashback.
    assert balance(client, customer["id"])["posted"] == 1_000 - 1_000 + 100 + 250 - 25
    assert balance(client, merchant["id"])["posted"] == 750
    assert balance(client, rewards["id"])["posted"] == 100 - 100 + 25


def test_a_transaction_is_reversed_in_whole_only(client: httpx.Client, engine: Engine) -> None:
    payer = funded(client, engine, 90)
    sinks = [open_account(client)["id"] for _ in range(2)]
    entries = [
        {"account_id": payer["id"], "amount": -90},
        {"account_id": sinks[0], "amount": 40},
        {"account_id": sinks[1], "amount": 50},
    ]
    txn = accepted(client, "/v1/transactions", {"entries": entries})
    wait_final(engine, [txn["id"]])
    part = post_money(client, f"/v1/transactions/{txn['id']}/reverse", {"amount": 10})
    assert (part.status_code, part.json()["code"]) == (422, "partial_reversal_not_allowed")
    whole = accepted(client, f"/v1/transactions/{txn['id']}/reverse", {})
    wait_final(engine, [whole["id"]])
    assert [(e["account_id"], e["amount"]) for e in whole["entries"]] == [
        (payer["id"], 90),
        (sinks[0], -40),
        (sinks[1], -50),
    ]
    assert balance(client, payer["id"])["posted"] == 90


def test_only_a_posted_movement_can_be_reversed(client: httpx.Client, engine: Engine) -> None:
    poor, other = open_account(client), open_account(client)
    failed = transfer(client, poor["id"], other["id"], 5)
    wait_final(engine, [failed["id"]])
    response = post_money(client, f"/v1/transfers/{failed['id']}/reverse", {})
    assert (response.status_code, response.json()["code"]) == (409, "not_reversible")
    missing = post_money(client, "/v1/transfers/tr_nothing/reverse", {})
    assert (missing.status_code, missing.json()["code"]) == (404, "transfer_not_found")
    missing = post_money(client, "/v1/payments/pay_nothing/reverse", {})
    assert (missing.status_code, missing.json()["code"]) == (404, "payment_not_found")
    # A transfer is not a payment: the payments route does not reverse it.
    wrong = post_money(client, f"/v1/payments/{failed['id']}/reverse", {})
    assert (wrong.status_code, wrong.json()["code"]) == (404, "payment_not_found")
