"""Webhook hardening with real processes: a blackholed endpoint holds at most its share of the
webhook processes while a healthy endpoint's events keep arriving within seconds; an
endpoint re-enabled over HTTP gets the events it missed, and the replay route is bounded and
documented; the attempts metric is on /metrics from the first scrape; and through a real beat
and real workers, a failed first attempt is retried after its scheduled delay, not after the
requeue window."""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine
from standardwebhooks import Webhook

from devstack import create_database
from ledger_core.adapters.database import make_engine
from ledger_core.adapters.sql import SqlUnitOfWorkFactory
from ledger_core.config import Settings, normalize_database_url
from ledger_core.domain.model import TransferKind
from ledger_core.domain.webhooks import ATTEMPT_OUTCOMES
from ledger_core.service_layer import posting, webhooks
from tests.conftest import ROOT, TEST_WEBHOOK_TIMEOUT_SECONDS, wait_final
from tests.e2e.helpers import deposit, open_account
from tests.support.books import Books
from tests.support.processes import Process, start_api, start_beat, start_worker
from tests.support.receiver import Receiver, start_blackhole

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("books", "webhook_worker")]
wait_timeout_seconds = 30
# What a healthy endpoint's event may take from the deposit's request to its receiver:
# posting, the delivery task, one HTTP call. Below the attempt timeout, so one blackholed
# attempt ahead of it in a process would already be too much.
healthy_latency_max_seconds = 2.5
blackholed_deliveries = 8


def wait_requests(receiver: Receiver, path: str, count: int) -> list[Any]:
    deadline = time.monotonic() + wait_timeout_seconds
    while time.monotonic() < deadline:
        got = receiver.requests_to(path)
        if len(got) >= count:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{path}: {len(receiver.requests_to(path))} of {count} requests")


def test_a_blackholed_endpoint_does_not_hold_up_a_healthy_one(
    client: httpx.Client, engine: Engine, receiver: Receiver, endpoints: Any
) -> None:
    blackhole = start_blackhole()
    try:
        stuck, healthy = open_account(client), open_account(client)
        endpoints(blackhole.url("/never"), account_ids=[stuck["id"]])
        hook = endpoints(receiver.url("/healthy"), account_ids=[healthy["id"]])
        # More attempts to the blackhole than there are webhook processes, each hanging
        # until the attempt's timeout.
        wait_final(
            engine, [deposit(client, stuck["id"], 1)["id"] for _ in range(blackholed_deliveries)]
        )
        latencies = []
        for number in range(1, 4):
            started = time.monotonic()
            deposit(client, healthy["id"], number)
            [*_, last] = wait_requests(receiver, "/healthy", number)
            latencies.append(last.arrived_at - started)
            assert blackhole.accepted >= 1, "the blackhole's attempts are in flight meanwhile"
        assert max(latencies) <= healthy_latency_max_seconds, latencies
        assert healthy_latency_max_seconds < TEST_WEBHOOK_TIMEOUT_SECONDS
        for request in receiver.requests_to("/healthy"):
            Webhook(hook["secret"]).verify(request.body, request.headers)
    finally:
        blackhole.stop()


def test_reenabling_over_http_delivers_the_missed_events_and_replay_is_bounded(
    client: httpx.Client, engine: Engine, receiver: Receiver, endpoints: Any
) -> None:
    account = open_account(client)
    hook = endpoints(receiver.url("/missed"), account_ids=[account["id"]])
    path = f"/v1/webhook-endpoints/{hook['id']}"
    disabled = client.patch(path, json={"status": "disabled"}).json()
    assert disabled["disabled_at"] is not None
    missed = deposit(client, account["id"], 7)["id"]
    wait_final(engine, [missed])
    assert (
        client.post(path + "/replay", json={"since": disabled["disabled_at"]}).json()["code"]
        == "webhook_endpoint_disabled"
    )
    time.sleep(1)  # room for a wrong delivery to arrive
    assert receiver.requests_to("/missed") == []

    enabled = client.patch(path, json={"status": "enabled"})
    assert enabled.status_code == 200, enabled.text
    assert (enabled.json()["status"], enabled.json()["replayed"]) == ("enabled", 1)
    [request] = wait_requests(receiver, "/missed", 1)
    assert Webhook(hook["secret"]).verify(request.body, request.headers)["data"]["id"] == missed

    replay = client.post(path + "/replay", json={"since": disabled["disabled_at"]})
    assert replay.status_code == 202, replay.text
    assert replay.json() | {"since": None} == {
        "object": "webhook_replay",
        "endpoint_id": hook["id"],
        "since": None,
        "created": 0,
        "more": False,
    }
    for body in ({"since": "2026-01-01T00:00:00"}, {"since": "yesterday"}, {}, {"x": 1}):
        assert client.post(path + "/replay", json=body).status_code == 422, body
    for since in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        out_of_range = client.post(path + "/replay", json={"since": since})
        assert out_of_range.status_code == 422, out_of_range.text
    for since in ("0001-01-02T00:00:00Z", "9999-12-30T00:00:00+14:00"):
        extreme = client.post(path + "/replay", json={"since": since})
        assert (extreme.status_code, extreme.json().get("created")) == (202, 0), extreme.text
    unknown = client.post(
        "/v1/webhook-endpoints/we_nope/replay", json={"since": disabled["disabled_at"]}
    )
    assert unknown.status_code == 404
    operation = client.get("/openapi.json").json()["paths"][
        "/v1/webhook-endpoints/{endpoint_id}/replay"
    ]["post"]
    assert {"202", "404", "409", "422"} <= set(operation["responses"])


def test_the_attempts_metric_is_on_the_first_scrape(
    process_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**process_env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    (tmp_path / "metrics").mkdir()
    (tmp_path / "logs").mkdir()
    api, url = start_api(env, tmp_path / "logs")
    try:
        scrape = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        api.stop()
    for outcome in ATTEMPT_OUTCOMES:
        assert re.search(
            rf'^ledger_webhook_attempts_total\{{outcome="{outcome}"\}} 0\.0$', scrape, re.M
        ), outcome


# A failed first attempt, retried through beat: its own database and broker, so that only
# these processes see it, with a requeue window far longer than the first delay.
FIRST_DELAY_SECONDS = 3.0
REQUEUE_AFTER_SECONDS = 60
SCHEDULER_INTERVAL_SECONDS = 1
BROKER_DATABASE = 9


class IsolatedStack:
    def __init__(self, servers: tuple[str, str], env: dict[str, str]) -> None:
        self.name = f"ledger_beat_{secrets.token_hex(4)}"
        self.admin_url = servers[0].replace("postgresql+psycopg://", "postgresql://")
        self.database_url = normalize_database_url(create_database(servers[0], self.name))
        config = Config(str(ROOT / "alembic.ini"))
        config.attributes["database_url"] = self.database_url
        command.upgrade(config, "head")
        broker = re.sub(r"/\d+$", "", servers[1]) + f"/{BROKER_DATABASE}"
        self.dir = Path(tempfile.mkdtemp(prefix="ledger-beat-"))
        (self.dir / "metrics").mkdir()
        self.env = {
            **env,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": broker,
            "CELERY_BROKER_URL": broker,
            "PROMETHEUS_MULTIPROC_DIR": str(self.dir / "metrics"),
            "WEBHOOK_RETRY_SCHEDULE_SECONDS": str(FIRST_DELAY_SECONDS),
            "WEBHOOK_REQUEUE_AFTER_SECONDS": str(REQUEUE_AFTER_SECONDS),
            "WEBHOOK_SCHEDULER_INTERVAL_SECONDS": str(SCHEDULER_INTERVAL_SECONDS),
        }
        self.processes: list[Process] = []
        self.engine = make_engine(Settings(database_url=self.database_url, redis_url=broker))

    def start(self) -> None:
        for name, queue in (("beat-housekeeping", "housekeeping"), ("beat-webhooks", "webhooks")):
            self.processes.append(
                start_worker(self.env, self.dir, name=name, queue=queue, concurrency=1)
            )
        self.processes.append(start_beat(self.env, self.dir))

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.engine.dispose()
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def isolated(servers: tuple[str, str], process_env: dict[str, str]) -> Iterator[IsolatedStack]:
    stack = IsolatedStack(servers, process_env)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


class AllowAll:
    def check(self, url: str) -> str | None:
        return None


def test_a_failed_first_attempt_is_retried_after_its_delay_through_beat(
    isolated: IsolatedStack, receiver: Receiver
) -> None:
    uow_factory = SqlUnitOfWorkFactory(isolated.engine)
    books = Books(uow_factory, name="beat")
    account = books.open_account()
    hook = webhooks.create_endpoint(
        uow_factory,
        AllowAll(),
        url=receiver.on("/retried", lambda n: (500 if n == 1 else 204, 0.0)),
        events=None,
        account_ids=[account],
        description=None,
    )
    transfer_id = books.accept(TransferKind.DEPOSIT, None, account, 5)
    # Nothing enqueued by the posting, and no requeue window of its own: beat's scheduler
    # enqueues the first attempt, and the retry.
    posting.post_transfers(
        uow_factory,
        [transfer_id],
        options=posting.PostingOptions(
            enqueue_deliveries=lambda ids: None, webhook_requeue_after_seconds=0
        ),
    )
    first, second = wait_requests(receiver, "/retried", 2)
    gap = second.arrived_at - first.arrived_at
    # The delay (±10 % jitter), plus up to a scheduler interval and a task's latency; the
    # requeue window the scheduler set when it enqueued the first attempt is far beyond.
    assert FIRST_DELAY_SECONDS * 0.9 <= gap <= FIRST_DELAY_SECONDS * 1.1 + 3, gap
    assert gap < REQUEUE_AFTER_SECONDS / 2
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    Webhook(hook["secret"]).verify(second.body, second.headers)
