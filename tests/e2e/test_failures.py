"""Accepted transfers survive a worker killed mid-task and an enqueue lost to a broker outage."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
from sqlalchemy import Engine, text

from api import create_app
from ledger_core.config import Settings
from tests.conftest import TEST_SWEEPER_PENDING_AGE_MIN_SECONDS, wait_final
from tests.e2e.helpers import deposit, open_account, post_money
from tests.support.processes import ManagedWorker, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("books")]
lock_wait_timeout_seconds = 30


def entries_of(engine: Engine, transfer_id: str) -> list[int]:
    with engine.connect() as connection:
        return list(
            connection.scalars(
                text("SELECT amount FROM entries WHERE transfer_id = :id ORDER BY amount"),
                {"id": transfer_id},
            )
        )


def wait_for_worker_blocked_on_lock(engine: Engine) -> None:
    """Bounded wait until some ledger backend is waiting for a row lock."""
    deadline = time.monotonic() + lock_wait_timeout_seconds
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            waiting = connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        if waiting:
            return
        time.sleep(0.1)
    raise AssertionError("the worker never reached the account lock")


def test_worker_killed_mid_batch_still_posts_every_transfer_once(
    client: httpx.Client, engine: Engine, transfer_worker: ManagedWorker
) -> None:
    source, destination = open_account(client), open_account(client)
    wait_final(engine, [deposit(client, source["id"], 1_000)["id"]])
    children_before = {child.pid for child in transfer_worker.children()}
    assert children_before
    move = {
        "kind": "transfer",
        "source_account_id": source["id"],
        "destination_account_id": destination["id"],
        "amount": 3,
    }

    with engine.connect() as blocker:
        # The worker will claim the batch, lock its transfers, and wait here for the account.
        blocker.execute(
            text("SELECT 1 FROM accounts WHERE id = :id FOR NO KEY UPDATE"), {"id": source["id"]}
        )
        accepted = post_money(client, "/v1/transfers/batch", {"items": [move] * 300}).json()
        wait_for_worker_blocked_on_lock(engine)
        for pid in children_before:
            os.kill(pid, signal.SIGKILL)
        blocker.rollback()

    ids = [item["id"] for item in accepted["items"]]
    statuses = wait_final(engine, ids)
    assert set(statuses.values()) == {"posted"}
    for transfer_id in ids[:: len(ids) // 10]:
        assert entries_of(engine, transfer_id) == [-3, 3]
    with engine.connect() as connection:
        count = connection.scalar(
            text("SELECT count(*) FROM entries WHERE transfer_id = ANY(:ids)"), {"ids": ids}
        )
    assert count == 2 * len(ids)
    assert client.get(f"/v1/accounts/{source['id']}").json()["balance"]["posted"] == 100
    # The pool replaced what we killed; the task was redelivered, not lost.
    assert not children_before & {child.pid for child in transfer_worker.children()}
    assert "WorkerLostError" in transfer_worker.log_text()


def test_transfer_whose_enqueue_was_lost_is_swept_and_posted_once(
    settings: Settings, admin_key: str, engine: Engine, client: httpx.Client
) -> None:
    # This API's broker is a port nobody listens on: the enqueue fails after the commit.
    cut_off = create_app({"SETTINGS": settings, "BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"})
    web = cut_off.test_client()
    web.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key}"
    account = open_account(client)
    try:
        response = web.post(
            "/v1/deposits",
            json={"account_id": account["id"], "amount": 250},
            headers={"Idempotency-Key": "lost-enqueue"},
        )
    finally:
        cut_off.extensions["ledger"].engine.dispose()
        cut_off.extensions["ledger"].redis.close()
    assert response.status_code == 202
    transfer_id = response.json["id"]
    with engine.connect() as connection:
        status = connection.scalar(
            text("SELECT status FROM transfers WHERE id = :id"), {"id": transfer_id}
        )
    assert status == "pending"

    assert wait_final(engine, [transfer_id]) == {transfer_id: "posted"}
    with engine.connect() as connection:
        waited = connection.scalar(
            text("SELECT extract(epoch FROM posted_at - created_at) FROM transfers WHERE id = :id"),
            {"id": transfer_id},
        )
    # Posted only once it was old enough to sweep: the sweeper, not a lucky task, moved it.
    assert waited >= TEST_SWEEPER_PENDING_AGE_MIN_SECONDS
    assert entries_of(engine, transfer_id) == [-250, 250]
    assert client.get(f"/v1/accounts/{account['id']}").json()["balance"]["posted"] == 250
