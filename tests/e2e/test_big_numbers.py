"""Money beyond 2^53: amounts are int64 and balances 128-bit, and both travel as JSON
integers, exact to the last digit (README, "Numbers"). A JSON parser that keeps big
integers (Python's does) reads back exactly what was posted."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from sqlalchemy import Engine

from ledger_core.domain import limits
from tests.conftest import wait_final
from tests.e2e.helpers import deposit, open_account

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("books")]

float_exact_max = 2**53 - 1  # the largest integer a JavaScript Number holds exactly


def test_balances_beyond_int64_are_exact_json_integers(
    client: httpx.Client, engine: Engine
) -> None:
    account = open_account(client, currency="JPY")["id"]
    ids = [deposit(client, account, limits.amount_max)["id"] for _ in range(3)]
    assert set(wait_final(engine, ids).values()) == {"posted"}

    response = client.get(f"/v1/accounts/{account}")
    assert response.status_code == 200
    expected = 3 * limits.amount_max
    assert expected > 2**64 > float_exact_max
    # The digits themselves, not a float's approximation ("5.5340232221128655e+19").
    assert re.search(rf'"posted":\s*{expected}\b', response.text), response.text
    assert json.loads(response.text)["balance"]["posted"] == expected

    entries = client.get(f"/v1/accounts/{account}/entries").json()["data"]
    assert sorted(e["balance_after"] for e in entries) == [limits.amount_max * n for n in (1, 2, 3)]
    assert all(e["amount"] == limits.amount_max for e in entries)
