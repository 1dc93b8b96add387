"""Every bad request gets its 4xx problem document and leaves the database unchanged."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, text

from ledger_core.domain import limits
from ledger_core.service_layer.access import Scope, create_api_key

# What a request can write. Entries are left out: they come only from the worker posting
# transfers (whose count is here), and a worker may be posting earlier ones meanwhile.
TABLES = (
    "accounts",
    "transfers",
    "transfer_batches",
    "idempotency_keys",
    "custom_currencies",
    "webhook_endpoints",
)


@pytest.fixture
def web(app: Any, admin_key: str) -> FlaskClient:
    client: FlaskClient = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key}"
    return client


@pytest.fixture
def snapshot(engine: Engine) -> Callable[[], dict[str, int]]:
    def counts() -> dict[str, int]:
        with engine.connect() as connection:
            return {
                table: connection.scalar(text(f"SELECT count(*) FROM {table}")) for table in TABLES
            }

    return counts


@pytest.fixture
def usd(web: FlaskClient) -> list[str]:
    return [web.post("/v1/accounts", json={"currency": "USD"}).json["id"] for _ in range(2)]


def assert_problem(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.data
    assert response.mimetype == "application/problem+json"
    body = response.json
    assert body["status"] == status
    assert body["code"] == code
    assert body["title"]
    assert body["detail"]
    assert body["type"].endswith(code)


def key(n: str) -> dict[str, str]:
    return {"Idempotency-Key": f"bad-input-{n}"}


def test_unknown_accounts_are_404(web: FlaskClient, usd: list[str], snapshot: Any) -> None:
    before = snapshot()
    for path, body in [
        ("/v1/deposits", {"account_id": "acc_nope", "amount": 1}),
        ("/v1/withdrawals", {"account_id": "acc_nope", "amount": 1}),
        (
            "/v1/transfers",
            {"source_account_id": "acc_nope", "destination_account_id": usd[0], "amount": 1},
        ),
        (
            "/v1/transfers",
            {"source_account_id": usd[0], "destination_account_id": "acc_nope", "amount": 1},
        ),
    ]:
        assert_problem(
            web.post(path, json=body, headers=key(path + str(body))), 404, "account_not_found"
        )
    assert_problem(web.get("/v1/accounts/acc_nope"), 404, "account_not_found")
    assert_problem(web.get("/v1/accounts/acc_nope/entries"), 404, "account_not_found")
    assert_problem(web.get("/v1/transfers/tr_nope"), 404, "transfer_not_found")
    assert_problem(web.get("/v1/nothing-here"), 404, "not_found")
    assert snapshot() == before


def test_transfer_shape_errors_are_422(web: FlaskClient, usd: list[str], snapshot: Any) -> None:
    eur = web.post("/v1/accounts", json={"currency": "EUR"}).json["id"]
    before = snapshot()
    cases = [
        (
            {"source_account_id": usd[0], "destination_account_id": eur, "amount": 1},
            "currency_mismatch",
        ),
        (
            {"source_account_id": usd[0], "destination_account_id": usd[0], "amount": 1},
            "same_account",
        ),
        (
            {
                "source_account_id": usd[0],
                "destination_account_id": usd[1],
                "amount": 1,
                "colour": "red",
            },
            "validation_error",
        ),
        ({"source_account_id": usd[0], "amount": 1}, "validation_error"),
    ]
    for n, (body, code) in enumerate(cases):
        assert_problem(web.post("/v1/transfers", json=body, headers=key(f"s{n}")), 422, code)
    assert snapshot() == before


@pytest.mark.parametrize(
    "amount", [0, -1, 2**63, 10**30, 1.5, 100.0, "100", True, None, [1], {"value": 1}]
)
def test_amounts_outside_1_to_int64_max_are_422(
    web: FlaskClient, usd: list[str], snapshot: Any, amount: Any
) -> None:
    before = snapshot()
    response = web.post(
        "/v1/deposits", json={"account_id": usd[0], "amount": amount}, headers=key(repr(amount))
    )
    assert_problem(response, 422, "invalid_amount")
    assert snapshot() == before


def test_largest_amount_is_accepted(web: FlaskClient, usd: list[str]) -> None:
    response = web.post(
        "/v1/deposits", json={"account_id": usd[0], "amount": 2**63 - 1}, headers=key("max")
    )
    assert response.status_code == 202
    assert response.json["amount"] == 2**63 - 1


def test_malformed_or_oversized_bodies(web: FlaskClient, usd: list[str], snapshot: Any) -> None:
    before = snapshot()
    for n, raw in enumerate([b"{", b"", b"NaN", b'{"amount": Infinity}', b"\xff\xfe"]):
        response = web.post(
            "/v1/deposits", data=raw, content_type="application/json", headers=key(f"m{n}")
        )
        assert_problem(response, 400, "malformed_json")
    assert_problem(
        web.post("/v1/deposits", json=[1, 2], headers=key("list")), 422, "validation_error"
    )
    huge = json.dumps({"account_id": usd[0], "amount": 1, "description": "x" * 70_000})
    response = web.post(
        "/v1/deposits", data=huge, content_type="application/json", headers=key("huge")
    )
    assert_problem(response, 413, "request_too_large")
    response = web.post(
        "/v1/deposits", data="amount=1", content_type="text/plain", headers=key("plain")
    )
    assert_problem(response, 415, "unsupported_media_type")
    assert snapshot() == before


def test_idempotency_key_rules(web: FlaskClient, usd: list[str], snapshot: Any) -> None:
    body = {"account_id": usd[0], "amount": 5}
    before = snapshot()
    for path in ("/v1/deposits", "/v1/withdrawals"):
        assert_problem(web.post(path, json=body), 400, "idempotency_key_missing")
    assert_problem(
        web.post(
            "/v1/transfers",
            json={"source_account_id": usd[0], "destination_account_id": usd[1], "amount": 1},
        ),
        400,
        "idempotency_key_missing",
    )
    for bad in ["", "x" * 256, "caf\u00e9", "tab\there"]:
        response = web.post("/v1/deposits", json=body, headers={"Idempotency-Key": bad})
        assert_problem(response, 400, "idempotency_key_invalid")
    assert snapshot() == before

    first = web.post("/v1/deposits", json=body, headers=key("reuse"))
    assert first.status_code == 202
    after_first = snapshot()
    changed = web.post("/v1/deposits", json={**body, "amount": 6}, headers=key("reuse"))
    assert_problem(changed, 422, "idempotency_key_reused")
    same = web.post("/v1/deposits", json=body, headers=key("reuse"))
    assert same.status_code == 202
    assert same.headers["Idempotent-Replayed"] == "true"
    assert same.json == first.json
    assert snapshot() == after_first


def test_accounts_validation(web: FlaskClient, snapshot: Any) -> None:
    before = snapshot()
    assert_problem(web.post("/v1/accounts", json={"currency": "XYZ"}), 422, "unknown_currency")
    assert_problem(web.post("/v1/accounts", json={"currency": "usd"}), 422, "unknown_currency")
    assert_problem(web.post("/v1/accounts", json={}), 422, "validation_error")
    assert_problem(
        web.post("/v1/accounts", json={"currency": "USD", "allow_overdraft": "yes"}),
        422,
        "validation_error",
    )
    assert_problem(
        web.post("/v1/accounts", json={"currency": "USD", "metadata": {"k": 1}}),
        422,
        "validation_error",
    )
    assert_problem(web.get("/v1/accounts?limit=0"), 400, "invalid_query")
    assert_problem(web.get("/v1/accounts?limit=201"), 400, "invalid_query")
    assert_problem(web.get("/v1/accounts?cursor=%%%"), 400, "invalid_cursor")
    assert snapshot() == before


def test_system_accounts_cannot_be_named(web: FlaskClient, usd: list[str], engine: Engine) -> None:
    with engine.connect() as connection:
        system_id = connection.scalar(
            text("SELECT id FROM accounts WHERE is_system AND currency = 'USD'")
        )
    response = web.post(
        "/v1/transfers",
        json={"source_account_id": system_id, "destination_account_id": usd[0], "amount": 1},
        headers=key("mint"),
    )
    assert_problem(response, 422, "system_account_not_allowed")


def test_authentication_and_scopes(app: Any, uow_factory: Any, snapshot: Any) -> None:
    anonymous = app.test_client()
    before = snapshot()
    assert_problem(anonymous.get("/v1/accounts"), 401, "unauthorized")
    assert_problem(
        anonymous.get("/v1/accounts", headers={"Authorization": "Bearer lk_wrong"}),
        401,
        "unauthorized",
    )
    assert_problem(
        anonymous.get("/v1/accounts", headers={"Authorization": "Basic abc"}), 401, "unauthorized"
    )
    _, read_key = create_api_key(uow_factory, name="reader", scope=Scope.READ)
    reader = {"Authorization": f"Bearer {read_key}"}
    assert anonymous.get("/v1/accounts", headers=reader).status_code == 200
    assert_problem(
        anonymous.post("/v1/accounts", json={"currency": "USD"}, headers=reader), 403, "forbidden"
    )
    assert snapshot() == before
    assert anonymous.get("/health").status_code == 200
    assert anonymous.get("/ready").status_code == 200


def _items(source: str, destination: str, count: int) -> list[dict[str, Any]]:
    return [
        {
            "kind": "transfer",
            "source_account_id": source,
            "destination_account_id": destination,
            "amount": 1,
        }
        for _ in range(count)
    ]


def test_batch_of_too_many_items_is_413_and_stores_nothing(
    web: FlaskClient, usd: list[str], snapshot: Any
) -> None:
    before = snapshot()
    response = web.post(
        "/v1/transfers/batch",
        json={"items": _items(usd[0], usd[1], limits.batch_items_max + 1)},
        headers=key("batch-big"),
    )
    assert_problem(response, 413, "too_many_items")
    assert str(limits.batch_items_max) in response.json["detail"]
    assert_problem(
        web.post("/v1/transfers/batch", json={"items": []}, headers=key("batch-empty")),
        422,
        "validation_error",
    )
    assert snapshot() == before


def test_an_invalid_item_refuses_the_whole_batch_with_its_index(
    web: FlaskClient, usd: list[str], snapshot: Any
) -> None:
    before = snapshot()
    items = _items(usd[0], usd[1], 5)
    items[3]["amount"] = 0
    response = web.post("/v1/transfers/batch", json={"items": items}, headers=key("batch-3"))
    assert_problem(response, 422, "invalid_amount")
    assert response.json["item_index"] == 3
    assert response.json["errors"][0]["field"].startswith("items.3.")

    items = _items(usd[0], usd[1], 5)
    items[2]["kind"] = "refund"
    response = web.post("/v1/transfers/batch", json={"items": items}, headers=key("batch-kind"))
    assert_problem(response, 422, "validation_error")
    assert response.json["item_index"] == 2

    # Rules that need the database: an unknown account, then mixed currencies.
    items = _items(usd[0], usd[1], 5)
    items[4]["destination_account_id"] = "acc_missing"
    response = web.post("/v1/transfers/batch", json={"items": items}, headers=key("batch-404"))
    assert_problem(response, 404, "account_not_found")
    assert response.json["item_index"] == 4
    assert snapshot() == before
    eur = web.post("/v1/accounts", json={"currency": "EUR"}).json["id"]
    before = snapshot()
    items = [*_items(usd[0], usd[1], 3), {"kind": "deposit", "account_id": eur, "amount": 2}]
    items[1]["destination_account_id"] = eur
    response = web.post("/v1/transfers/batch", json={"items": items}, headers=key("batch-fx"))
    assert_problem(response, 422, "currency_mismatch")
    assert response.json["item_index"] == 1
    assert snapshot() == before
    # Nothing was stored under the key either: the same key may be used once it is fixed.
    fixed = web.post(
        "/v1/transfers/batch", json={"items": _items(usd[0], usd[1], 2)}, headers=key("batch-fx")
    )
    assert fixed.status_code == 202, fixed.json
    assert fixed.headers["Location"] == f"/v1/transfers/batch/{fixed.json['id']}"
