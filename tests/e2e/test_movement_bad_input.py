"""Every bad request to the money-movement routes gets its 4xx problem document and
stores nothing: unbalanced, mixed currencies, too many entries, unknown accounts, a hold
that expired, an over-capture, an over-reversal, malformed times."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from ledger_core.domain import limits
from tests.conftest import wait_final
from tests.e2e.helpers import accepted, funded, new_key, open_account

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("books")]
TABLES = ("transfers", "transfer_legs", "holds", "payments", "idempotency_keys", "entries")


@pytest.fixture
def snapshot(engine: Engine) -> Callable[[], dict[str, int]]:
    def counts() -> dict[str, int]:
        with engine.connect() as connection:
            return {t: connection.scalar(text(f"SELECT count(*) FROM {t}")) for t in TABLES}

    return counts


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert (body["status"], body["code"]) == (status, code)
    assert body["detail"] and body["type"].endswith(code)


def post(client: httpx.Client, path: str, body: Any) -> httpx.Response:
    return client.post(path, json=body, headers={"Idempotency-Key": new_key()})


def test_bad_transactions(client: httpx.Client, engine: Engine, snapshot: Any) -> None:
    usd = [open_account(client)["id"] for _ in range(2)]
    eur = open_account(client, "EUR")["id"]

    def entries(*pairs: tuple[str, int]) -> dict[str, Any]:
        return {"entries": [{"account_id": a, "amount": m} for a, m in pairs]}

    too_many = [(usd[i % 2], 1 if i % 2 else -1) for i in range(limits.transaction_entries_max + 2)]
    cases = [
        (entries((usd[0], -5), (usd[1], 4)), 422, "unbalanced"),
        # Each currency balances on its own: -5 USD and +5 EUR is not a transaction.
        (entries((usd[0], -5), (eur, 5)), 422, "unbalanced"),
        (entries(*too_many), 422, "too_many_entries"),
        (entries((usd[0], -5), ("acc_nope", 5)), 404, "account_not_found"),
        (entries((usd[0], -5), (usd[0], 5)), 422, "same_account"),
        (entries((usd[0], 0), (usd[1], 0)), 422, "invalid_amount"),
        (entries((usd[0], -5)), 422, "validation_error"),
        (entries((usd[0], -(2**63)), (usd[1], 2**63)), 422, "invalid_amount"),
        (
            {**entries((usd[0], -1), (usd[1], 1)), "effective_at": "yesterday"},
            422,
            "validation_error",
        ),
        ({"entries": "all"}, 422, "validation_error"),
    ]
    before = snapshot()
    for body, status, code in cases:
        assert_problem(post(client, "/v1/transactions", body), status, code)
    assert snapshot() == before


def test_bad_payments_and_holds(client: httpx.Client, engine: Engine, snapshot: Any) -> None:
    usd = [open_account(client)["id"] for _ in range(3)]
    eur = open_account(client, "EUR")["id"]

    def payment(customer: str, merchant: str, rewards: str | None = None, **extra: Any) -> Any:
        cashback = None if rewards is None else {"rewards_account_id": rewards, "basis_points": 100}
        body = {"customer_account_id": customer, "merchant_account_id": merchant, "amount": 10}
        return {**body, "cashback": cashback, **extra}

    def hold(source: str, destination: str, **extra: Any) -> Any:
        return {
            "source_account_id": source,
            "destination_account_id": destination,
            "amount": 10,
            **extra,
        }

    cases = [
        ("/v1/payments", payment(usd[0], eur), 422, "currency_mismatch"),
        ("/v1/payments", payment(usd[0], usd[1], eur), 422, "currency_mismatch"),
        ("/v1/payments", payment(usd[0], "acc_nope"), 404, "account_not_found"),
        ("/v1/payments", payment(usd[0], usd[1], "acc_nope"), 404, "account_not_found"),
        ("/v1/payments", payment(usd[0], usd[0]), 422, "same_account"),
        (
            "/v1/payments",
            {
                **payment(usd[0], usd[1]),
                "cashback": {"rewards_account_id": usd[2], "basis_points": 10_001},
            },
            422,
            "validation_error",
        ),
        ("/v1/holds", hold(usd[0], eur), 422, "currency_mismatch"),
        ("/v1/holds", hold("acc_nope", usd[0]), 404, "account_not_found"),
        ("/v1/holds", hold(usd[0], usd[0]), 422, "same_account"),
        ("/v1/holds", hold(usd[0], usd[1], expires_in_seconds=0), 422, "validation_error"),
    ]
    before = snapshot()
    for path, body, status, code in cases:
        assert_problem(post(client, path, body), status, code)
    for path, code in [
        ("/v1/holds/hold_nope/capture", "hold_not_found"),
        ("/v1/holds/hold_nope/void", "hold_not_found"),
        ("/v1/transactions/txn_nope/reverse", "transaction_not_found"),
    ]:
        assert_problem(post(client, path, {}), 404, code)
    assert_problem(client.get("/v1/holds/hold_nope"), 404, "hold_not_found")
    assert_problem(client.get("/v1/payments/pay_nope"), 404, "payment_not_found")
    assert_problem(client.get("/v1/transactions/txn_nope"), 404, "transaction_not_found")
    assert snapshot() == before


def test_bad_actions_on_real_holds_and_movements(
    client: httpx.Client, engine: Engine, snapshot: Any
) -> None:
    buyer, seller = funded(client, engine, 100), open_account(client)
    body = {"source_account_id": buyer["id"], "destination_account_id": seller["id"], "amount": 30}
    short = accepted(client, "/v1/holds", {**body, "expires_in_seconds": 1})
    long = accepted(client, "/v1/holds", body)
    moved = accepted(client, "/v1/transfers", body)
    pending = accepted(client, "/v1/transfers", {**body, "amount": 1_000})
    wait_final(engine, [short["id"], long["id"], moved["id"], pending["id"]])
    time.sleep(1.1)  # the short hold is past its expiry, expired by beat or about to be
    before = snapshot()
    cases = [
        (f"/v1/holds/{short['id']}/capture", {}, 409, "hold_not_active"),
        (f"/v1/holds/{long['id']}/capture", {"amount": 31}, 422, "capture_exceeds_hold"),
        (f"/v1/holds/{long['id']}/capture", {"amount": 0}, 422, "invalid_amount"),
        (f"/v1/holds/{long['id']}/void", {"amount": 1}, 422, "validation_error"),
        (f"/v1/transfers/{moved['id']}/reverse", {"amount": 31}, 422, "reversal_exceeds_original"),
        (f"/v1/transfers/{pending['id']}/reverse", {}, 409, "not_reversible"),
        (f"/v1/transfers/{long['id']}/reverse", {}, 409, "not_reversible"),
    ]
    for path, request_body, status, code in cases:
        assert_problem(post(client, path, request_body), status, code)
    # An expiry beat makes meanwhile is not the request's doing: compare what requests write.
    after = snapshot()
    expired = client.get(f"/v1/holds/{short['id']}").json()["action_id"] is not None
    assert after["transfers"] - before["transfers"] <= (1 if expired else 0)
    assert {t: after[t] for t in TABLES if t not in ("transfers", "entries")} == {
        t: before[t] for t in TABLES if t not in ("transfers", "entries")
    }


def test_malformed_times_in_queries_are_400(client: httpx.Client) -> None:
    account = open_account(client)["id"]
    for query in ("as_of=yesterday", "as_of=2026-01-01T00:00:00", "as_of=2026-13-01T00:00:00Z"):
        assert_problem(client.get(f"/v1/accounts/{account}?{query}"), 400, "invalid_query")
    for query in ("created_after=1", "created_before=2026-01-01"):
        assert_problem(client.get(f"/v1/accounts/{account}/entries?{query}"), 400, "invalid_query")
