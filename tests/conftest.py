"""Shared fixtures. Servers start only when a test asks for them, so unit tests need none.

Without DATABASE_URL and REDIS_URL the suite starts an embedded PostgreSQL and Valkey;
with them set, it uses those servers (a fresh database is created either way).
"""

from __future__ import annotations

import os
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
from sqlalchemy import Engine, text

from api import create_app
from devstack import create_database, start_stack
from ledger_core.adapters.database import make_engine
from ledger_core.adapters.sql import SqlUnitOfWorkFactory
from ledger_core.config import Settings, normalize_database_url
from ledger_core.service_layer.access import Scope, create_api_key
from ledger_core.service_layer.reconcile import reconcile
from tests.support.processes import (
    ManagedWorker,
    Process,
    start_api,
    start_beat,
    start_worker,
)
from tests.support.receiver import Receiver, start_receiver

ROOT = Path(__file__).resolve().parent.parent
# Short enough that the sweeper test waits seconds, long enough that a busy worker's
# queue is rarely swept (a sweep of a queued transfer is harmless: posting is idempotent).
TEST_SWEEPER_PENDING_AGE_MIN_SECONDS = 3
TEST_WEBHOOK_TIMEOUT_SECONDS = 3
TEST_WEBHOOK_ENDPOINT_CONCURRENCY_MAX = 1
TEST_POSTING_ATTEMPTS_MAX = 3
final_wait_timeout_seconds = 90


@pytest.fixture(scope="session")
def servers() -> Iterator[tuple[str, str]]:
    """(server database URL, Redis URL)."""
    if os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"):
        yield os.environ["DATABASE_URL"], os.environ["REDIS_URL"]
        return
    # Not under tmp_path: pytest resets its root to 0700 at each session start, which would
    # lock the unprivileged PostgreSQL user out of a stack another session is using.
    data_dir = Path(tempfile.mkdtemp(prefix="ledger-test-stack-"))
    stack = start_stack(data_dir, durable=False)
    try:
        yield stack.database_url, stack.redis_url
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(servers: tuple[str, str]) -> Iterator[str]:
    """A fresh database, migrated to head with the real migrations."""
    name = f"ledger_test_{secrets.token_hex(4)}"
    url = normalize_database_url(create_database(servers[0], name))
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    command.upgrade(config, "head")
    yield url
    admin = servers[0].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url(servers: tuple[str, str]) -> str:
    return servers[1]


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str) -> Settings:
    return Settings(database_url=database_url, redis_url=redis_url)


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def uow_factory(engine: Engine) -> Any:
    return SqlUnitOfWorkFactory(engine)


@pytest.fixture(scope="session")
def process_env(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    return {
        # One directory for every process, so the API's /metrics shows the workers' too.
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("metrics")),
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SWEEPER_PENDING_AGE_MIN_SECONDS": str(TEST_SWEEPER_PENDING_AGE_MIN_SECONDS),
        "SWEEPER_INTERVAL_SECONDS": "1",
        # Expiries and delayed cashbacks within a second of their time.
        "HOLDS_INTERVAL_SECONDS": "1",
        # A transfer that cannot post is quarantined in seconds, not minutes.
        "POSTING_ATTEMPTS_MAX": str(TEST_POSTING_ATTEMPTS_MAX),
        "POSTING_RETRY_DELAYS_SECONDS": "0.5",
        # Webhooks: loopback receivers allowed, and a schedule of seconds, not days.
        "LEDGER_DEVELOPMENT": "1",
        "WEBHOOK_RETRY_SCHEDULE_SECONDS": ",".join(["1"] * 20),
        "WEBHOOK_TIMEOUT_SECONDS": str(TEST_WEBHOOK_TIMEOUT_SECONDS),
        "WEBHOOK_LEASE_MARGIN_SECONDS": "1",
        "WEBHOOK_REQUEUE_AFTER_SECONDS": "2",
        "WEBHOOK_SCHEDULER_INTERVAL_SECONDS": "1",
        # One attempt in flight per endpoint, beside the webhook worker's two processes: a
        # slow endpoint can hold one of them, never both.
        "WEBHOOK_ENDPOINT_CONCURRENCY_MAX": str(TEST_WEBHOOK_ENDPOINT_CONCURRENCY_MAX),
        "WEBHOOK_ENDPOINT_BUSY_RETRY_AFTER_SECONDS": "1",
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def housekeeping(process_env: dict[str, str], log_dir: Path) -> Iterator[Process]:
    """Beat and the worker of its queue: the sweeper, the webhook scheduler, reconciliation."""
    worker = start_worker(
        process_env, log_dir, name="housekeeping", queue="housekeeping", concurrency=1
    )
    beat = start_beat(process_env, log_dir)
    yield worker
    beat.stop()
    worker.stop()


@pytest.fixture(scope="session")
def transfer_worker(
    process_env: dict[str, str], log_dir: Path, housekeeping: Process
) -> Iterator[ManagedWorker]:
    worker = ManagedWorker(process_env, log_dir, name="transfers", queue="transfers")
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def webhook_worker(
    process_env: dict[str, str], log_dir: Path, housekeeping: Process
) -> Iterator[Process]:
    worker = start_worker(process_env, log_dir, name="webhooks", queue="webhooks")
    yield worker
    worker.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = start_receiver()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def api_url(process_env: dict[str, str], log_dir: Path) -> Iterator[str]:
    process, base_url = start_api(process_env, log_dir)
    yield base_url
    process.stop()


@pytest.fixture(scope="session")
def admin_key(uow_factory: Any) -> str:
    return create_api_key(uow_factory, name="tests", scope=Scope.ADMIN)[1]


@pytest.fixture
def client(api_url: str, admin_key: str, transfer_worker: ManagedWorker) -> Iterator[httpx.Client]:
    """HTTP client of the real API, with a real worker posting behind it."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    with httpx.Client(
        base_url=api_url,
        headers={"Authorization": f"Bearer {admin_key}"},
        timeout=30,
        limits=limits,
    ) as http:
        yield http


@pytest.fixture
def app(settings: Settings) -> Iterator[Any]:
    """An in-process Flask app on the same database, for request-level tests."""
    app = create_app({"SETTINGS": settings, "TESTING": True})
    yield app
    services = app.extensions["ledger"]
    services.engine.dispose()
    services.redis.close()
    services.cache.client.close()


@pytest.fixture
def books(uow_factory: Any) -> Iterator[None]:
    """After the test, the books must balance: checked with the reconciliation queries."""
    yield
    violations = {rule: rows for rule, rows in reconcile(uow_factory).items() if rows}
    assert violations == {}


def statuses_of(engine: Engine, transfer_ids: list[str]) -> dict[str, str]:
    """id -> status of those of these transfers that exist."""
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT id, status FROM transfers WHERE id = ANY(:ids)"), {"ids": transfer_ids}
        )
        return {row.id: row.status for row in rows}


def wait_final(
    engine: Engine,
    transfer_ids: list[str],
    timeout_seconds: float = final_wait_timeout_seconds,
) -> dict[str, str]:
    """Wait (bounded) until every transfer left PENDING; return id -> status."""
    deadline = time.monotonic() + timeout_seconds
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        statuses = statuses_of(engine, transfer_ids)
        if len(statuses) == len(set(transfer_ids)) and "pending" not in statuses.values():
            return statuses
        time.sleep(0.2)
    pending = sorted(i for i, s in statuses.items() if s == "pending")
    raise AssertionError(
        f"{len(pending)} transfers still pending after {timeout_seconds} s: {pending[:5]}"
    )
