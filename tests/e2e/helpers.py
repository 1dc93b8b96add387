"""Small HTTP helpers shared by the end-to-end tests."""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx

from tests.conftest import wait_final

in_use_retries_max = 50
in_use_retry_sleep_max_seconds = 0.2


def new_key() -> str:
    return f"test-{secrets.token_hex(8)}"


def open_account(client: httpx.Client, currency: str = "USD", **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/accounts", json={"currency": currency, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def post_money(
    client: httpx.Client, path: str, body: dict[str, Any], key: str | None = None
) -> httpx.Response:
    """POST with an Idempotency-Key, retrying while the key is in use (409), as a client should."""
    headers = {"Idempotency-Key": key or new_key()}
    for _ in range(in_use_retries_max):
        response = client.post(path, json=body, headers=headers)
        if response.status_code != 409 or response.json()["code"] != "idempotency_key_in_use":
            return response
        time.sleep(min(float(response.headers["Retry-After"]), in_use_retry_sleep_max_seconds))
    raise AssertionError(f"key {headers['Idempotency-Key']} still in use")


def deposit(client: httpx.Client, account_id: str, amount: int) -> dict[str, Any]:
    response = post_money(client, "/v1/deposits", {"account_id": account_id, "amount": amount})
    assert response.status_code == 202, response.text
    return response.json()


def accepted(
    client: httpx.Client, path: str, body: dict[str, Any], key: str | None = None
) -> dict[str, Any]:
    """POST a movement that must be accepted (202); its body."""
    response = post_money(client, path, body, key)
    assert response.status_code == 202, response.text
    return response.json()


def balance(client: httpx.Client, account_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/accounts/{account_id}")
    assert response.status_code == 200, response.text
    return response.json()["balance"]


def funded(client: httpx.Client, engine: Any, amount: int, **fields: Any) -> dict[str, Any]:
    """A USD account holding `amount` once its deposit posted."""
    account = open_account(client, **fields)
    wait_final(engine, [deposit(client, account["id"], amount)["id"]])
    return account
