"""Two-phase holds end to end: reserve, capture (all or part), void, expire; under
concurrency each amount moves once and available never goes below zero."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.conftest import wait_final
from tests.e2e.helpers import accepted, balance, funded, new_key, open_account, post_money

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("books")]
hold_wait_timeout_seconds = 30.0


def hold(client: httpx.Client, source: str, destination: str, amount: int, **extra: Any) -> Any:
    body = {
        "source_account_id": source,
        "destination_account_id": destination,
        "amount": amount,
        **extra,
    }
    return accepted(client, "/v1/holds", body)


def wait_hold(client: httpx.Client, hold_id: str, statuses: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + hold_wait_timeout_seconds
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/v1/holds/{hold_id}").json()
        if body["status"] in statuses:
            return body
        time.sleep(0.1)
    raise AssertionError(f"hold {hold_id} never became {statuses}: {body}")


def test_a_hold_reserves_then_a_partial_capture_moves_part_and_releases_the_rest(
    client: httpx.Client, engine: Engine
) -> None:
    buyer, seller = funded(client, engine, 1_000), open_account(client)
    created = hold(client, buyer["id"], seller["id"], 300, expires_in_seconds=3_600)
    assert (created["object"], created["status"]) == ("hold", "pending")
    wait_final(engine, [created["id"]])
    active = client.get(f"/v1/holds/{created['id']}").json()
    assert active["status"] == "active" and active["expires_at"] is not None
    # Posted is untouched; available is lower; the destination expects it.
    # Pending is net, as for transfers not yet posted: what is on its way out is negative.
    assert balance(client, buyer["id"]) == {"posted": 1_000, "pending": -300, "available": 700}
    assert balance(client, seller["id"]) == {"posted": 0, "pending": 300, "available": 0}

    capture = post_money(client, f"/v1/holds/{created['id']}/capture", {"amount": 120})
    assert capture.status_code == 202, capture.text
    assert (capture.json()["kind"], capture.json()["hold_id"]) == ("capture", created["id"])
    wait_final(engine, [capture.json()["id"]])
    captured = client.get(f"/v1/holds/{created['id']}").json()
    assert (captured["status"], captured["captured_amount"]) == ("captured", 120)
    assert balance(client, buyer["id"]) == {"posted": 880, "pending": 0, "available": 880}
    assert balance(client, seller["id"]) == {"posted": 120, "pending": 0, "available": 120}
    entries = client.get(f"/v1/transactions/{capture.json()['id']}").json()["entries"]
    assert [(e["account_id"], e["amount"]) for e in entries] == [
        (buyer["id"], -120),
        (seller["id"], 120),
    ]


def test_a_void_releases_everything_and_blocks_any_capture(
    client: httpx.Client, engine: Engine
) -> None:
    buyer, seller = funded(client, engine, 50), open_account(client)
    created = hold(client, buyer["id"], seller["id"], 50)
    wait_final(engine, [created["id"]])
    # All of it is reserved: a withdrawal of 1 is refused by the worker.
    short = accepted(client, "/v1/withdrawals", {"account_id": buyer["id"], "amount": 1})
    wait_final(engine, [short["id"]])
    assert client.get(f"/v1/transfers/{short['id']}").json()["rejection_reason"] == (
        "insufficient_funds"
    )
    void = post_money(client, f"/v1/holds/{created['id']}/void", {})
    assert void.status_code == 202, void.text
    wait_final(engine, [void.json()["id"]])
    assert client.get(f"/v1/holds/{created['id']}").json()["status"] == "voided"
    assert balance(client, buyer["id"]) == {"posted": 50, "pending": 0, "available": 50}
    late = post_money(client, f"/v1/holds/{created['id']}/capture", {})
    assert late.status_code == 409
    assert late.json()["code"] == "hold_not_active"


def test_a_second_action_with_another_key_is_refused_and_one_key_replays(
    client: httpx.Client, engine: Engine
) -> None:
    buyer, seller = funded(client, engine, 80), open_account(client)
    created = hold(client, buyer["id"], seller["id"], 80)
    wait_final(engine, [created["id"]])
    key = new_key()
    first = post_money(client, f"/v1/holds/{created['id']}/capture", {}, key)
    replay = post_money(client, f"/v1/holds/{created['id']}/capture", {}, key)
    assert (first.status_code, replay.status_code) == (202, 202)
    assert replay.json()["id"] == first.json()["id"]
    again = post_money(client, f"/v1/holds/{created['id']}/capture", {})
    assert (again.status_code, again.json()["code"]) == (409, "hold_not_active")
    void = post_money(client, f"/v1/holds/{created['id']}/void", {})
    assert (void.status_code, void.json()["code"]) == (409, "hold_not_active")
    wait_final(engine, [first.json()["id"]])
    assert balance(client, seller["id"])["posted"] == 80


def test_200_concurrent_holds_on_an_account_funded_for_100(
    client: httpx.Client, engine: Engine
) -> None:
    amount = 7
    source, destination = funded(client, engine, 100 * amount), open_account(client)

    def send(_: int) -> str:
        return str(hold(client, source["id"], destination["id"], amount)["id"])

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(send, range(200)))
    wait_final(engine, ids)
    holds = [client.get(f"/v1/holds/{i}").json() for i in ids]
    active = [h["id"] for h in holds if h["status"] == "active"]
    assert len(active) == 100
    assert sum(h["status"] == "rejected" for h in holds) == 100
    assert balance(client, source["id"]) == {
        "posted": 100 * amount,
        "pending": -100 * amount,
        "available": 0,
    }

    # Capture and void every active hold at once, each twice (capture and void racing):
    # each hold is settled by one of them, and its amount moves once at most.
    def act(pair: tuple[str, str]) -> tuple[str, int]:
        hold_id, action = pair
        response = post_money(client, f"/v1/holds/{hold_id}/{action}", {})
        return action, response.status_code

    jobs = [(h, a) for h in active for a in ("capture", "void")]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(act, jobs))
    assert sorted({status for _, status in results}) == [202, 409]
    assert sum(status == 202 for _, status in results) == 100
    settled = [wait_hold(client, h, {"captured", "voided"}) for h in active]
    captured = sum(h["status"] == "captured" for h in settled)
    assert captured == sum(a == "capture" and s == 202 for a, s in results)
    assert balance(client, destination["id"]) == {
        "posted": captured * amount,
        "pending": 0,
        "available": captured * amount,
    }
    assert balance(client, source["id"]) == {
        "posted": (100 - captured) * amount,
        "pending": 0,
        "available": (100 - captured) * amount,
    }


def test_a_hold_past_its_expiry_is_expired_by_beat_and_cannot_be_captured(
    client: httpx.Client, engine: Engine
) -> None:
    buyer, seller = funded(client, engine, 40), open_account(client)
    created = hold(client, buyer["id"], seller["id"], 40, expires_in_seconds=1)
    wait_final(engine, [created["id"]])
    time.sleep(1.1)
    # Past its expiry, even before beat acts on it.
    capture = post_money(client, f"/v1/holds/{created['id']}/capture", {})
    assert (capture.status_code, capture.json()["code"]) == (409, "hold_not_active")
    expired = wait_hold(client, created["id"], {"expired"})
    assert expired["action_id"] is not None
    assert balance(client, buyer["id"]) == {"posted": 40, "pending": 0, "available": 40}
    assert balance(client, seller["id"]) == {"posted": 0, "pending": 0, "available": 0}
    # The expiry is a movement of its own, with its event.
    action = client.get(f"/v1/transactions/{expired['action_id']}").json()
    assert (action["kind"], action["status"], action["entries"]) == ("expire", "posted", [])


def test_an_expiry_racing_captures_leaves_each_hold_captured_or_expired_never_both(
    client: httpx.Client, engine: Engine
) -> None:
    count, amount = 30, 3
    buyer, seller = funded(client, engine, count * amount), open_account(client)
    ids = [hold(client, buyer["id"], seller["id"], amount, expires_in_seconds=2)["id"]]
    ids += [
        hold(client, buyer["id"], seller["id"], amount, expires_in_seconds=2)["id"]
        for _ in range(count - 1)
    ]
    wait_final(engine, ids)
    created_at = time.monotonic()

    def capture_near_expiry(hold_id: str) -> int:
        # Spread across the expiry: some before it, some after, beat in between.
        time.sleep(max(0.0, 1.5 + (hash(hold_id) % 100) / 100 - (time.monotonic() - created_at)))
        return post_money(client, f"/v1/holds/{hold_id}/capture", {}).status_code

    with ThreadPoolExecutor(count) as pool:
        statuses = list(pool.map(capture_near_expiry, ids))
    assert set(statuses) <= {202, 409}
    final = [wait_hold(client, h, {"captured", "expired"}) for h in ids]
    captured = sum(h["status"] == "captured" for h in final)
    assert captured == statuses.count(202)
    with engine.connect() as connection:
        actions = connection.execute(
            text(
                "SELECT hold_id, count(*) FROM transfers WHERE hold_id = ANY(:ids)"
                " AND status = 'posted' GROUP BY hold_id"
            ),
            {"ids": ids},
        ).all()
    assert sorted(n for _, n in actions) == [1] * count
    assert balance(client, seller["id"])["posted"] == captured * amount
    assert balance(client, buyer["id"])["posted"] == (count - captured) * amount
