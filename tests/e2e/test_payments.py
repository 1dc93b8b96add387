"""Payments with cashback end to end: customer to merchant and rewards to customer in one
posting (or the cashback held until its delay passes); totals in closed form."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from ledger_core.domain import limits
from tests.conftest import wait_final
from tests.e2e.helpers import accepted, balance, funded, open_account

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("books")]
cashback_wait_timeout_seconds = 30.0


def pay(
    client: httpx.Client, customer: str, merchant: str, amount: int, cashback: Any = None
) -> dict[str, Any]:
    body = {
        "customer_account_id": customer,
        "merchant_account_id": merchant,
        "amount": amount,
        "cashback": cashback,
    }
    return accepted(client, "/v1/payments", body)


def event_types(engine: Engine, transfer_ids: list[str]) -> list[str]:
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT type FROM events WHERE transfer_id = ANY(:ids) ORDER BY type"),
            {"ids": transfer_ids},
        )
        return [row.type for row in rows]


def test_a_payment_with_cashback_moves_both_in_one_posting(
    client: httpx.Client, engine: Engine
) -> None:
    customer, rewards = funded(client, engine, 10_000), funded(client, engine, 1_000)
    merchant = open_account(client)
    payment = pay(
        client,
        customer["id"],
        merchant["id"],
        2_599,
        {"rewards_account_id": rewards["id"], "basis_points": 150},
    )
    assert (payment["object"], payment["status"]) == ("payment", "pending")
    assert payment["cashback"]["amount"] == 38  # floor(2599 * 150 / 10000) = floor(38.985)
    wait_final(engine, [payment["id"]])
    posted = client.get(f"/v1/payments/{payment['id']}").json()
    assert (posted["status"], posted["cashback"]["status"]) == ("posted", "posted")
    assert balance(client, customer["id"])["posted"] == 10_000 - 2_599 + 38
    assert balance(client, merchant["id"])["posted"] == 2_599
    assert balance(client, rewards["id"])["posted"] == 1_000 - 38
    txn = client.get(f"/v1/transactions/{payment['id']}").json()
    assert [(e["account_id"], e["amount"]) for e in txn["entries"]] == [
        (customer["id"], -2_599),
        (merchant["id"], 2_599),
        (rewards["id"], -38),
        (customer["id"], 38),
    ]
    assert event_types(engine, [payment["id"]]) == ["payment.posted"]


def test_an_empty_rewards_account_rejects_the_whole_payment(
    client: httpx.Client, engine: Engine
) -> None:
    customer, rewards = funded(client, engine, 500), open_account(client)
    merchant = open_account(client)
    payment = pay(
        client,
        customer["id"],
        merchant["id"],
        500,
        {"rewards_account_id": rewards["id"], "basis_points": 100},
    )
    wait_final(engine, [payment["id"]])
    rejected = client.get(f"/v1/payments/{payment['id']}").json()
    assert (rejected["status"], rejected["rejection_reason"]) == ("rejected", "insufficient_funds")
    assert [balance(client, a["id"])["posted"] for a in (customer, merchant, rewards)] == [
        500,
        0,
        0,
    ]
    assert event_types(engine, [payment["id"]]) == ["payment.rejected"]


def test_a_delayed_cashback_is_pending_until_beat_posts_it(
    client: httpx.Client, engine: Engine
) -> None:
    customer, rewards = funded(client, engine, 1_000), funded(client, engine, 100)
    merchant = open_account(client)
    cashback = {
        "rewards_account_id": rewards["id"],
        "basis_points": 500,
        "available_after_seconds": 2,
    }
    payment = pay(client, customer["id"], merchant["id"], 400, cashback)
    hold_id = payment["cashback"]["hold_id"]
    assert hold_id is not None and payment["cashback"]["amount"] == 20
    wait_final(engine, [payment["id"], hold_id])
    # Paid; the cashback is on its way: pending for the customer, reserved on rewards.
    assert balance(client, customer["id"]) == {"posted": 600, "pending": 20, "available": 600}
    assert balance(client, rewards["id"]) == {"posted": 100, "pending": -20, "available": 80}
    deadline = time.monotonic() + cashback_wait_timeout_seconds
    while client.get(f"/v1/holds/{hold_id}").json()["status"] != "captured":
        assert time.monotonic() < deadline, "the delayed cashback never posted"
        time.sleep(0.2)
    action_id = client.get(f"/v1/holds/{hold_id}").json()["action_id"]
    wait_final(engine, [action_id])
    assert balance(client, customer["id"]) == {"posted": 620, "pending": 0, "available": 620}
    assert balance(client, rewards["id"]) == {"posted": 80, "pending": 0, "available": 80}
    assert client.get(f"/v1/payments/{payment['id']}").json()["cashback"]["status"] == "posted"
    assert event_types(engine, [payment["id"], action_id]) == ["cashback.posted", "payment.posted"]


def test_concurrent_payments_with_cashback_match_the_closed_form(
    client: httpx.Client, engine: Engine
) -> None:
    amounts = [101, 250, 999, 1_234, 7, 50_001]
    basis_points, rounds = 125, 5
    customers = [funded(client, engine, 300_000)["id"] for _ in range(4)]
    rewards = funded(client, engine, 50_000)["id"]
    merchant = open_account(client)["id"]
    jobs = [(c, a) for c in customers for a in amounts for _ in range(rounds)]

    def send(job: tuple[str, int]) -> str:
        customer, amount = job
        cashback = {"rewards_account_id": rewards, "basis_points": basis_points}
        return str(pay(client, customer, merchant, amount, cashback)["id"])

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(send, jobs))
    assert set(wait_final(engine, ids).values()) == {"posted"}
    paid = sum(amounts) * rounds
    back = sum(a * basis_points // 10_000 for a in amounts) * rounds
    assert [balance(client, c)["posted"] for c in customers] == [300_000 - paid + back] * 4
    assert balance(client, merchant)["posted"] == paid * 4
    assert balance(client, rewards)["posted"] == 50_000 - back * 4


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    # Each example is a real posting: shrinking would take minutes; the failing example
    # is printed as it is.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@example(amount=limits.amount_max, basis_points=10_000)
@example(amount=1, basis_points=9_999)
@example(amount=9_999, basis_points=1)
@given(
    amount=st.integers(min_value=1, max_value=limits.amount_max),
    basis_points=st.integers(min_value=0, max_value=10_000),
)
def test_cashback_rounding_never_creates_money(
    client: httpx.Client, engine: Engine, amount: int, basis_points: int
) -> None:
    customer = funded(client, engine, amount)
    rewards = funded(client, engine, amount)
    merchant = open_account(client)
    cashback = {"rewards_account_id": rewards["id"], "basis_points": basis_points}
    payment = pay(client, customer["id"], merchant["id"], amount, cashback)
    wait_final(engine, [payment["id"]])
    after = [balance(client, a["id"])["posted"] for a in (customer, merchant, rewards)]
    back = after[0]
    # What the customer got back is at most its share, rounded down; nothing appears.
    assert back * 10_000 <= amount * basis_points < (back + 1) * 10_000
    assert sum(after) == 2 * amount
    assert payment["cashback"]["amount"] == back
