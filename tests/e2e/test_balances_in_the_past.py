"""Balances in the past: `as_of` equals a replay of the account's entries up to that
instant, and the entries listing windows by time (hypothesis, on real PostgreSQL)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from tests.conftest import wait_final
from tests.e2e.helpers import accepted, open_account

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("books")]


def parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def all_entries(client: httpx.Client, account_id: str, **window: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/accounts/{account_id}/entries", params={"limit": "100", **window})
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["next_cursor"] is None  # fewer than a page here
    return list(page["data"])


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    movements=st.lists(st.integers(min_value=-50, max_value=200), min_size=1, max_size=12),
    probes=st.lists(st.floats(min_value=-0.5, max_value=1.5), min_size=1, max_size=6),
)
def test_as_of_equals_a_replay_of_the_entries(
    client: httpx.Client, engine: Engine, movements: list[int], probes: list[float]
) -> None:
    account = open_account(client, allow_overdraft=True)["id"]
    other = open_account(client, allow_overdraft=True)["id"]
    ids = []
    for amount in movements:
        if amount == 0:
            continue
        source, destination = (other, account) if amount > 0 else (account, other)
        body = {
            "source_account_id": source,
            "destination_account_id": destination,
            "amount": abs(amount),
        }
        # One at a time: each posts before the next, so entries spread over time.
        ids.append(accepted(client, "/v1/transfers", body)["id"])
        wait_final(engine, ids[-1:])
    entries = all_entries(client, account)
    assert [e["transfer_id"] for e in entries] == ids
    times = [parse(e["created_at"]) for e in entries] or [datetime.now().astimezone()]
    start, end = times[0], times[-1]
    span = max(end - start, timedelta(milliseconds=1))
    instants = [start + span * p for p in probes] + times  # exact entry times too
    for instant in instants:
        replay = sum(e["amount"] for e in entries if parse(e["created_at"]) <= instant)
        response = client.get(f"/v1/accounts/{account}", params={"as_of": rfc3339(instant)})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["balance"]["posted"] == replay, instant
        assert body["balance"]["pending"] is None and body["as_of"] is not None
        # The window (after, before) of the listing: the entries strictly inside it.
        after = rfc3339(instant - span / 3)
        windowed = all_entries(
            client, account, created_after=after, created_before=rfc3339(instant)
        )
        expected = [
            e["id"] for e in entries if instant - span / 3 < parse(e["created_at"]) < instant
        ]
        assert [e["id"] for e in windowed] == expected


def test_as_of_before_any_entry_is_zero_and_now_is_the_balance(
    client: httpx.Client, engine: Engine
) -> None:
    account = open_account(client)["id"]
    opened = datetime.now().astimezone()
    deposit = accepted(client, "/v1/deposits", {"account_id": account, "amount": 42})
    wait_final(engine, [deposit["id"]])
    before = client.get(
        f"/v1/accounts/{account}", params={"as_of": rfc3339(opened - timedelta(days=1))}
    )
    assert before.json()["balance"] == {"posted": 0, "pending": None, "available": None}
    later = rfc3339(datetime.now().astimezone() + timedelta(days=1))
    assert (
        client.get(f"/v1/accounts/{account}", params={"as_of": later}).json()["balance"]["posted"]
        == 42
    )
