"""A transfer whose posting always fails (here PostgreSQL itself refuses its entries) is
retried, then quarantined after posting_attempts_max, without holding up its neighbours;
meanwhile the sweeper keeps posting newer transfers whose wake-up was lost."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine, text

from api import create_app
from ledger_core.config import Settings
from ledger_core.service_layer.reconcile import reconcile
from tests.conftest import TEST_POSTING_ATTEMPTS_MAX, wait_final
from tests.e2e.helpers import deposit, open_account
from tests.support.processes import free_port, run_ledger

pytestmark = [pytest.mark.e2e]
quarantine_wait_timeout_seconds = 60


@pytest.fixture
def poisoned_account(client: httpx.Client, engine: Engine) -> Iterator[str]:
    """An account whose entries PostgreSQL refuses, as a bug or a corrupt row would."""
    account = open_account(client)["id"]
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE OR REPLACE FUNCTION test_refuse_entry() RETURNS trigger"
                " LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'entry refused for test'; END $$"
            )
        )
        connection.execute(
            text(
                "CREATE TRIGGER test_poison BEFORE INSERT ON entries FOR EACH ROW"
                f" WHEN (NEW.account_id = '{account}') EXECUTE FUNCTION test_refuse_entry()"
            )
        )
    try:
        yield account
    finally:
        with engine.begin() as connection:
            connection.execute(text("DROP TRIGGER IF EXISTS test_poison ON entries"))


def _lost_wakeup_deposit(settings: Settings, admin_key: str, account_id: str) -> str:
    """Accepted by an API whose broker nobody listens on: only the sweeper can post it."""
    cut_off = create_app({"SETTINGS": settings, "BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"})
    web = cut_off.test_client()
    web.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key}"
    try:
        response = web.post(
            "/v1/deposits",
            json={"account_id": account_id, "amount": 9},
            headers={"Idempotency-Key": f"lost-{account_id}"},
        )
    finally:
        cut_off.extensions["ledger"].engine.dispose()
        cut_off.extensions["ledger"].redis.close()
    assert response.status_code == 202
    return str(response.json["id"])


def _row(engine: Engine, transfer_id: str) -> object:
    with engine.connect() as connection:
        return connection.execute(
            text("SELECT status, posting_attempts, posting_error FROM transfers WHERE id = :id"),
            {"id": transfer_id},
        ).one()


def test_a_transfer_that_never_posts_is_quarantined_and_the_sweeper_still_sweeps(
    client: httpx.Client,
    engine: Engine,
    settings: Settings,
    admin_key: str,
    uow_factory: object,
    poisoned_account: str,
    process_env: dict[str, str],
) -> None:
    healthy = open_account(client)["id"]
    poisoned = deposit(client, poisoned_account, 5)["id"]
    # Neighbours accepted with it, in the same batches as it: they post all the same.
    neighbours = [deposit(client, healthy, n)["id"] for n in range(1, 6)]
    assert set(wait_final(engine, neighbours).values()) == {"posted"}

    deadline = time.monotonic() + quarantine_wait_timeout_seconds
    lost: list[str] = []
    while time.monotonic() < deadline and _row(engine, poisoned).status != "quarantined":
        if not lost:
            # A newer transfer whose wake-up is lost while the poisoned one keeps failing.
            lost.append(_lost_wakeup_deposit(settings, admin_key, healthy))
        time.sleep(0.2)
    row = _row(engine, poisoned)
    assert row.status == "quarantined", row
    assert row.posting_attempts == TEST_POSTING_ATTEMPTS_MAX
    assert "entry refused for test" in row.posting_error
    assert wait_final(engine, lost) == {lost[0]: "posted"}
    # The account shows the money as never arrived, and nothing half-posted.
    assert client.get(f"/v1/accounts/{poisoned_account}").json()["balance"]["posted"] == 0
    assert client.get(f"/v1/transfers/{poisoned}").json()["status"] == "quarantined"
    violations = reconcile(uow_factory)  # type: ignore[arg-type]
    assert violations["transfer_quarantined"] == [(poisoned, TEST_POSTING_ATTEMPTS_MAX)]

    # The cause is fixed; an operator gives it back to posting, and it posts.
    with engine.begin() as connection:
        connection.execute(text("DROP TRIGGER test_poison ON entries"))
    released = run_ledger("transfers", "release", poisoned, env=process_env)
    assert released.returncode == 0, released.stderr
    assert wait_final(engine, [poisoned]) == {poisoned: "posted"}
    assert client.get(f"/v1/accounts/{poisoned_account}").json()["balance"]["posted"] == 5
    assert not any(reconcile(uow_factory).values())  # type: ignore[arg-type]


def test_an_operator_can_give_up_on_a_quarantined_transfer(
    client: httpx.Client,
    engine: Engine,
    uow_factory: object,
    poisoned_account: str,
    process_env: dict[str, str],
) -> None:
    poisoned = deposit(client, poisoned_account, 7)["id"]
    deadline = time.monotonic() + quarantine_wait_timeout_seconds
    while time.monotonic() < deadline and _row(engine, poisoned).status != "quarantined":
        time.sleep(0.2)
    assert _row(engine, poisoned).status == "quarantined"
    rejected = run_ledger("transfers", "reject", poisoned, env=process_env)
    assert rejected.returncode == 0, rejected.stderr
    transfer = client.get(f"/v1/transfers/{poisoned}").json()
    assert (transfer["status"], transfer["rejection_reason"]) == ("rejected", "posting_failed")
    with engine.connect() as connection:
        event_type = connection.scalar(
            text("SELECT type FROM events WHERE transfer_id = :t"), {"t": poisoned}
        )
    assert event_type == "transfer.rejected"
    assert not any(reconcile(uow_factory).values())  # type: ignore[arg-type]
