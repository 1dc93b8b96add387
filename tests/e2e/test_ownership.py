"""Account owners over HTTP with the real worker: a write key cannot take money out of
another owner's account by any movement (403 `account_not_owned`, nothing stored, balances
unchanged, its Idempotency-Key still free), can out of its own; another key of the same
owner and an admin key can; only admin opens accounts allowed to overdraw; and a key
revoked with `ledger api-keys revoke` or past its expiry is refused (401) within the API's
key cache TTL."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from ledger_core.domain import limits
from ledger_core.domain.access import Scope
from ledger_core.service_layer.access import create_api_key
from tests.conftest import wait_final
from tests.e2e.helpers import (
    accepted,
    balance,
    funded,
    new_key,
    open_account,
    post_money,
)
from tests.support.processes import run_ledger

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("books")]

# Every API process forgets a key check after the cache's TTL; the margin covers the
# request that is under way and the poll's own interval.
refusal_wait_margin_seconds = 1.5
refusal_poll_interval_seconds = 0.1
# Requests sent once a key must be refused by every API process.
refused_requests_count = 10
key_lifetime_seconds = 3.0
# Under the cache's TTL: a key still cached this long after its expiry outlived it.
expiry_refusal_margin_seconds = 1.0

KeyClient = Callable[..., tuple[str, httpx.Client]]


@pytest.fixture
def key_client(api_url: str, uow_factory: Any, client: httpx.Client) -> Iterator[KeyClient]:
    """Makes (key id, HTTP client) of a new key; `client` starts the worker behind the API."""
    opened: list[httpx.Client] = []

    def make(
        owner: str | None, scope: Scope = Scope.WRITE, expires_at: datetime | None = None
    ) -> tuple[str, httpx.Client]:
        key_id, secret = create_api_key(
            uow_factory, name=f"ownership {owner}", scope=scope, owner=owner, expires_at=expires_at
        )
        http = httpx.Client(
            base_url=api_url, headers={"Authorization": f"Bearer {secret}"}, timeout=30
        )
        opened.append(http)
        return key_id, http

    yield make
    for http in opened:
        http.close()


def owner_name(who: str) -> str:
    # Owners are shared across the session's database: each test uses its own.
    return f"{who}-{secrets.token_hex(4)}"


def stored_by(engine: Engine, key_id: str) -> int:
    """Movements and batches stored under a key: a refused request adds none."""
    with engine.connect() as connection:
        return int(
            connection.scalar(
                text(
                    "SELECT (SELECT count(*) FROM transfers WHERE api_key_id = :key)"
                    " + (SELECT count(*) FROM transfer_batches WHERE api_key_id = :key)"
                ),
                {"key": key_id},
            )
        )


def assert_not_owned(response: httpx.Response, account_id: str) -> dict[str, Any]:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert (problem["code"], problem["account_id"]) == ("account_not_owned", account_id)
    return problem


def transfer_body(source: str, destination: str, amount: int) -> dict[str, Any]:
    return {"source_account_id": source, "destination_account_id": destination, "amount": amount}


def test_a_write_key_cannot_take_money_out_of_another_owners_account(
    key_client: KeyClient, engine: Engine
) -> None:
    ann_id, ann = key_client(owner_name("ann"))
    _, ben = key_client(owner_name("ben"))
    mine, theirs = funded(ann, engine, 1_000)["id"], funded(ben, engine, 1_000)["id"]
    shop = str(open_account(ben)["id"])
    rewards = funded(ben, engine, 1_000)["id"]
    before = stored_by(engine, ann_id)
    refusals = [
        ("/v1/withdrawals", {"account_id": theirs, "amount": 10}, theirs),
        ("/v1/transfers", transfer_body(theirs, mine, 10), theirs),
        (
            "/v1/transactions",
            {
                "entries": [
                    {"account_id": theirs, "amount": -10},
                    {"account_id": mine, "amount": 10},
                ]
            },
            theirs,
        ),
        (
            "/v1/payments",
            {"customer_account_id": theirs, "merchant_account_id": shop, "amount": 10},
            theirs,
        ),
        (
            "/v1/payments",
            {
                "customer_account_id": mine,
                "merchant_account_id": shop,
                "amount": 100,
                "cashback": {"rewards_account_id": rewards, "basis_points": 500},
            },
            rewards,
        ),
        ("/v1/holds", transfer_body(theirs, mine, 10), theirs),
    ]
    for path, body, account_id in refusals:
        assert_not_owned(post_money(ann, path, body), account_id)
    items = [
        {"kind": "deposit", "account_id": theirs, "amount": 5},
        {"kind": "withdrawal", "account_id": theirs, "amount": 5},
    ]
    batch = post_money(ann, "/v1/transfers/batch", {"items": items})
    assert assert_not_owned(batch, theirs)["item_index"] == 1
    assert stored_by(engine, ann_id) == before
    assert [balance(ann, a) for a in (theirs, rewards)] == [
        {"posted": 1_000, "pending": 0, "available": 1_000}
    ] * 2

    # A refusal is not stored under its Idempotency-Key: the corrected request goes through.
    key = new_key()
    assert_not_owned(post_money(ann, "/v1/transfers", transfer_body(theirs, mine, 10), key), theirs)
    moved = accepted(ann, "/v1/transfers", transfer_body(mine, theirs, 10), key)
    out = accepted(ann, "/v1/withdrawals", {"account_id": mine, "amount": 90})
    wait_final(engine, [moved["id"], out["id"]])
    assert balance(ann, mine)["posted"] == 900
    assert balance(ann, theirs)["posted"] == 1_010


def test_another_key_of_the_owner_and_an_admin_key_may_debit_its_accounts(
    key_client: KeyClient, client: httpx.Client, engine: Engine
) -> None:
    owner = owner_name("ann")
    _, ann = key_client(owner)
    _, rotated = key_client(owner)
    _, stranger = key_client(owner_name("cat"))
    mine = funded(ann, engine, 100)["id"]
    assert_not_owned(
        post_money(stranger, "/v1/withdrawals", {"account_id": mine, "amount": 1}), mine
    )
    by_rotated = accepted(rotated, "/v1/withdrawals", {"account_id": mine, "amount": 30})
    by_admin = accepted(client, "/v1/withdrawals", {"account_id": mine, "amount": 20})
    wait_final(engine, [by_rotated["id"], by_admin["id"]])
    assert balance(ann, mine)["posted"] == 50


def test_a_hold_is_captured_by_its_destinations_owner_not_by_a_stranger(
    key_client: KeyClient, engine: Engine
) -> None:
    _, ann = key_client(owner_name("ann"))
    _, ben = key_client(owner_name("ben"))
    cat_id, cat = key_client(owner_name("cat"))
    mine, theirs = funded(ann, engine, 100)["id"], str(open_account(ben)["id"])
    held = accepted(ann, "/v1/holds", transfer_body(mine, theirs, 60))
    wait_final(engine, [held["id"]])
    for action in ("capture", "void"):
        refused = post_money(cat, f"/v1/holds/{held['id']}/{action}", {})
        assert_not_owned(refused, mine)
    assert stored_by(engine, cat_id) == 0
    capture = accepted(ben, f"/v1/holds/{held['id']}/capture", {"amount": 40})
    wait_final(engine, [capture["id"]])
    assert [balance(ann, a)["posted"] for a in (mine, theirs)] == [60, 40]


def test_a_reversal_needs_the_owner_of_what_the_original_credited(
    key_client: KeyClient, engine: Engine
) -> None:
    _, ann = key_client(owner_name("ann"))
    _, ben = key_client(owner_name("ben"))
    mine, theirs = funded(ann, engine, 100)["id"], str(open_account(ben)["id"])
    original = accepted(ann, "/v1/transfers", transfer_body(mine, theirs, 30))
    wait_final(engine, [original["id"]])
    path = f"/v1/transfers/{original['id']}/reverse"
    assert_not_owned(post_money(ann, path, {"amount": 10}), theirs)
    refund = accepted(ben, path, {"amount": 10})
    wait_final(engine, [refund["id"]])
    assert [balance(ann, a)["posted"] for a in (mine, theirs)] == [80, 20]


def test_only_an_admin_key_opens_an_account_allowed_to_overdraw(
    key_client: KeyClient, client: httpx.Client
) -> None:
    _, ann = key_client(owner_name("ann"))
    body = {"currency": "USD", "allow_overdraft": True}
    refused = ann.post("/v1/accounts", json=body, headers={"Idempotency-Key": "overdraft"})
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "forbidden"
    created = client.post("/v1/accounts", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["allow_overdraft"] is True


# A new connection per request: on one kept-alive connection every request would go to
# the same API process, and "every process refuses it" would test one of them.
NEW_CONNECTION = {"Connection": "close"}


def check(http: httpx.Client) -> int:
    """The status of one authenticated read, over a connection of its own."""
    return http.get("/v1/accounts", params={"limit": 1}, headers=NEW_CONNECTION).status_code


def wait_refused(http: httpx.Client, deadline_monotonic: float) -> float:
    """Poll (bounded) until the key is refused; when it was, by the monotonic clock."""
    while time.monotonic() < deadline_monotonic:
        response = http.get("/v1/accounts", params={"limit": 1}, headers=NEW_CONNECTION)
        if response.status_code == 401:
            assert response.json()["code"] == "unauthorized"
            return time.monotonic()
        assert response.status_code == 200, response.text
        time.sleep(refusal_poll_interval_seconds)
    raise AssertionError("the key was still accepted")


def assert_refused_everywhere(http: httpx.Client) -> None:
    # Every API process (each has its own cache) refuses it by now.
    for _ in range(refused_requests_count):
        assert check(http) == 401


def test_a_key_revoked_with_the_cli_is_refused_within_the_cache_ttl(
    key_client: KeyClient, database_url: str
) -> None:
    key_id, ann = key_client(owner_name("ann"))
    # Checked, so the API processes that answered have it cached.
    for _ in range(refused_requests_count):
        assert check(ann) == 200
    revoked = run_ledger("api-keys", "revoke", key_id, database_url=database_url)
    assert revoked.returncode == 0, revoked.stderr
    revoked_monotonic = time.monotonic()
    ttl_seconds = limits.api_key_cache_ttl_seconds
    deadline = revoked_monotonic + ttl_seconds + refusal_wait_margin_seconds
    wait_refused(ann, deadline)
    time.sleep(max(0.0, revoked_monotonic + ttl_seconds - time.monotonic()))
    assert_refused_everywhere(ann)


def test_an_expired_key_is_refused(key_client: KeyClient) -> None:
    _, gone = key_client(owner_name("old"), expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert gone.get("/v1/accounts").status_code == 401
    expires_at = datetime.now(UTC) + timedelta(seconds=key_lifetime_seconds)
    _, soon = key_client(owner_name("soon"), expires_at=expires_at)
    assert soon.get("/v1/accounts", params={"limit": 1}).status_code == 200
    # The polls keep it cached, yet it is refused at its expiry, not up to a TTL later.
    assert expiry_refusal_margin_seconds < limits.api_key_cache_ttl_seconds
    wall_start, monotonic_start = datetime.now(UTC), time.monotonic()
    deadline = monotonic_start + key_lifetime_seconds + expiry_refusal_margin_seconds
    refused_monotonic = wait_refused(soon, deadline)
    refused_at = wall_start + timedelta(seconds=refused_monotonic - monotonic_start)
    assert refused_at >= expires_at, "refused before its expiry"
    assert_refused_everywhere(soon)


DEBITING_OPERATIONS = (
    "/v1/withdrawals",
    "/v1/transfers",
    "/v1/transfers/batch",
    "/v1/transactions",
    "/v1/payments",
    "/v1/holds",
    "/v1/holds/{hold_id}/capture",
    "/v1/holds/{hold_id}/void",
    "/v1/transfers/{transfer_id}/reverse",
    "/v1/transactions/{transaction_id}/reverse",
    "/v1/payments/{payment_id}/reverse",
)


def test_openapi_documents_account_not_owned_where_a_request_debits_accounts(app: Any) -> None:
    document = app.test_client().get("/openapi.json").json
    assert "account_not_owned" in document["info"]["description"]
    for path in DEBITING_OPERATIONS:
        operation = document["paths"][path]["post"]
        assert "403" in operation["responses"], path
        assert "`account_not_owned`" in operation["description"], path
    for path in ("/v1/deposits", "/v1/accounts"):
        assert "account_not_owned" not in document["paths"][path]["post"]["description"]
