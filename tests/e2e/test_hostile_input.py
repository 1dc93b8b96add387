"""Inputs crafted to break the parser, the database or the metrics get a 4xx problem
document, store nothing, and add no metric label values."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from sqlalchemy import Engine, text

from api.operations import request_json_depth_max
from tests.e2e.test_bad_input import TABLES, assert_problem, key

Snapshot = Callable[[], dict[str, int]]


@pytest.fixture
def web(app: Any, admin_key: str) -> FlaskClient:
    client: FlaskClient = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key}"
    return client


@pytest.fixture
def snapshot(engine: Engine) -> Snapshot:
    def counts() -> dict[str, int]:
        with engine.connect() as connection:
            return {
                table: connection.scalar(text(f"SELECT count(*) FROM {table}")) for table in TABLES
            }

    return counts


@pytest.fixture
def usd(web: FlaskClient) -> list[str]:
    return [web.post("/v1/accounts", json={"currency": "USD"}).json["id"] for _ in range(2)]


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _deposit_with_nested_metadata(account_id: str, depth: int) -> str:
    """Written out by hand: json.dumps itself would recurse that deep."""
    lists = "[" * depth + "]" * depth
    return '{"account_id": "' + account_id + '", "amount": 1, "metadata": {"k": ' + lists + "}}"


@pytest.mark.parametrize(
    ("path", "depth"),
    [
        ("/v1/deposits", request_json_depth_max + 1),
        # Deeper than the parser's recursion allows, within each route's body size.
        ("/v1/deposits", 30_000),
        ("/v1/transfers/batch", 1_000_000),
        ("/v1/accounts", 30_000),
        ("/v1/webhook-endpoints", 30_000),
    ],
)
def test_deeply_nested_json_is_400(
    web: FlaskClient, usd: list[str], snapshot: Snapshot, path: str, depth: int
) -> None:
    before = snapshot()
    body = _deposit_with_nested_metadata(usd[0], depth)
    response = web.post(
        path, data=body, content_type="application/json", headers=key(f"deep{path}{depth}")
    )
    assert_problem(response, 400, "json_too_deep")
    assert str(request_json_depth_max) in response.json["detail"]
    assert snapshot() == before


def test_json_at_the_depth_limit_is_parsed_then_validated(web: FlaskClient, usd: list[str]) -> None:
    # Depth 1 is the top-level object, 2 the metadata; the lists take the rest.
    body = _deposit_with_nested_metadata(usd[0], request_json_depth_max - 2)
    response = web.post(
        "/v1/deposits", data=body, content_type="application/json", headers=key("deep-ok")
    )
    assert_problem(response, 422, "validation_error")


@pytest.mark.parametrize(
    "limit", ["\u00b2", "\u0663", "\uff15", "1" * 5000, " 5", "5 ", "+5", "-5", "1_0", "5.0", ""]
)
def test_limits_that_are_not_plain_ascii_integers_are_400(web: FlaskClient, limit: str) -> None:
    for path in ("/v1/accounts", "/v1/webhook-endpoints"):
        assert_problem(web.get(path, query_string={"limit": limit}), 400, "invalid_query")


@pytest.mark.parametrize(
    "raw",
    [
        b"v1:99999999999999999999",  # beyond bigint
        b"v1:9223372036854775808",  # bigint max + 1
        b"v1:-1",
        b"v1: 5",
        b"v1:\xd9\xa3",  # an Arabic-Indic digit int() would accept
        b"v1:1_000",
        b"v1:abc",
        b"v1:\x00",
        b"\x00\x01\x02garbage",
        b"v1:" + b"9" * 5000,
    ],
)
def test_entries_cursors_that_this_api_never_made_are_400(
    web: FlaskClient, usd: list[str], raw: bytes
) -> None:
    response = web.get(f"/v1/accounts/{usd[0]}/entries", query_string={"cursor": _cursor(raw)})
    assert_problem(response, 400, "invalid_cursor")


@pytest.mark.parametrize("raw", [b"v1:acc_\x00", b"v1:" + b"a" * 5000, b"v1:\xed\xa0\x80"])
def test_list_cursors_that_this_api_never_made_are_400(web: FlaskClient, raw: bytes) -> None:
    for path in ("/v1/accounts", "/v1/webhook-endpoints"):
        assert_problem(web.get(path, query_string={"cursor": _cursor(raw)}), 400, "invalid_cursor")


NUL = "\x00"
SURROGATE = "\ud800"


@pytest.mark.parametrize("bad", [NUL, SURROGATE])
def test_text_postgresql_cannot_store_is_422_with_its_field(
    web: FlaskClient, usd: list[str], snapshot: Snapshot, bad: str
) -> None:
    before = snapshot()
    deposit: dict[str, Any] = {"account_id": usd[0], "amount": 1}
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/accounts", {"currency": "USD", "name": f"a{bad}b"}, "name"),
        ("/v1/accounts", {"currency": f"US{bad}"}, "currency"),
        ("/v1/accounts", {"currency": "USD", "metadata": {f"k{bad}": "v"}}, "metadata"),
        ("/v1/accounts", {"currency": "USD", "metadata": {"k": f"v{bad}"}}, "metadata"),
        ("/v1/deposits", {**deposit, "description": f"d{bad}"}, "description"),
        ("/v1/deposits", {**deposit, "metadata": {"k": bad}}, "metadata"),
        ("/v1/deposits", {"account_id": f"acc{bad}", "amount": 1}, "account_id"),
        (
            "/v1/transfers/batch",
            {
                "items": [
                    {"kind": "deposit", **deposit},
                    {"kind": "deposit", **deposit, "description": bad},
                ]
            },
            "items.1.deposit.description",
        ),
        ("/v1/webhook-endpoints", {"url": f"https://example.com/{bad}"}, "url"),
        (
            "/v1/webhook-endpoints",
            {"url": "https://example.com/", "description": bad},
            "description",
        ),
    ]
    for n, (path, body, field) in enumerate(cases):
        # json.dumps escapes the lone surrogate as \ud800, as a client's encoder would.
        raw = json.dumps(body)
        response = web.post(
            path, data=raw, content_type="application/json", headers=key(f"text-{n}-{ord(bad)}")
        )
        assert_problem(response, 422, "validation_error")
        assert [e["field"] for e in response.json["errors"]] == [field], response.json
        if path == "/v1/transfers/batch":
            assert response.json["item_index"] == 1
    assert snapshot() == before


@pytest.mark.parametrize(
    "path",
    [
        "/v1/accounts/acc%00x",
        "/v1/accounts/acc%00x/entries",
        "/v1/transfers/tr%00",
        "/v1/transfers/batch/bat%00",
        "/v1/webhook-endpoints/we%00",
        "/v1/webhook-endpoints/we%00/deliveries",
        "/v1/webhook-deliveries/wd%00",
        "/v1/events/evt%00",
        "/v1/accounts/" + "a" * 5000,
        "/v1/accounts/%ED%A0%80",
        "/v1/accounts/%FF%FE",
    ],
)
def test_path_ids_that_cannot_exist_are_404(web: FlaskClient, path: str) -> None:
    response = web.get(path)
    assert response.status_code == 404, response.data
    assert response.mimetype == "application/problem+json"
    assert response.json["code"].endswith("not_found")


def _label_values(metric: str, label: str) -> set[str]:
    return {
        sample.labels[label]
        for family in REGISTRY.collect()
        if family.name == metric
        for sample in family.samples
        if label in sample.labels
    }


def test_invented_methods_do_not_create_metric_labels(web: FlaskClient) -> None:
    for n in range(5):
        response = web.open("/v1/accounts", method=f"FUZZ{n}")
        assert_problem(response, 405, "method_not_allowed")
        web.open("/nowhere", method=f"FUZZ{n}")
    for metric in ("ledger_http_requests", "ledger_http_request_duration_seconds"):
        methods = _label_values(metric, "method")
        assert not {m for m in methods if m.startswith("FUZZ")}, methods
        assert "other" in methods


def test_query_parameters_an_operation_does_not_take_are_400(
    web: FlaskClient, usd: list[str], snapshot: Snapshot
) -> None:
    before = snapshot()
    for method, path in [
        ("GET", "/v1/accounts?limt=10"),  # a misspelt limit is not ignored
        ("GET", f"/v1/accounts/{usd[0]}?expand=entries"),
        ("POST", "/v1/deposits?amount=5"),
        ("GET", "/health?x=1"),
    ]:
        body = {"account_id": usd[0], "amount": 1} if method == "POST" else None
        response = web.open(path, method=method, json=body, headers=key(path))
        assert_problem(response, 400, "invalid_query")
    assert snapshot() == before
    assert web.get("/v1/accounts?limit=5").status_code == 200
