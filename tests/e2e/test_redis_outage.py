"""With Redis and the broker unreachable the API stays ready (degraded) and keeps accepting,
the sweeper posts what it accepted, and every publish or cache write it could not make is
counted; only PostgreSQL not answering makes it unready."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, text

from api import create_app
from ledger_core.config import Settings
from tests.conftest import TEST_SWEEPER_PENDING_AGE_MIN_SECONDS, wait_final
from tests.e2e.helpers import open_account
from tests.support.processes import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("books")]
flush_timeout_seconds = 30


def _errors(kind: str) -> float:
    return REGISTRY.get_sample_value("ledger_background_errors_total", {"kind": kind}) or 0.0


@contextlib.contextmanager
def _app(settings: Settings, admin_key: str) -> Iterator[tuple[Any, Any]]:
    app = create_app({"SETTINGS": settings})
    web = app.test_client()
    web.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key}"
    try:
        yield app, web
    finally:
        services = app.extensions["ledger"]
        services.engine.dispose()
        services.redis.close()
        services.cache.client.close()


@pytest.fixture
def without_redis(settings: Settings, admin_key: str) -> Iterator[tuple[Any, Any]]:
    """An API whose Redis (flags, cache, and so the broker too) is a port nobody listens on."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    # The cache URL is derived again from the dead REDIS_URL (its database 1).
    cut_off = dataclasses.replace(settings, redis_url=dead, idempotency_cache_url="")
    assert cut_off.idempotency_cache_url.startswith(dead.removesuffix("/0"))
    with _app(cut_off, admin_key) as built:
        yield built


def test_ready_while_redis_is_down_and_a_deposit_is_accepted_then_swept(
    without_redis: tuple[Any, Any], engine: Engine, client: httpx.Client
) -> None:
    app, web = without_redis
    ready = web.get("/ready")
    assert ready.status_code == 200, ready.data
    assert ready.json["status"] == "degraded"
    assert ready.json["checks"]["postgresql"] == "ok"
    assert ready.json["checks"]["redis"].startswith("degraded")
    assert ready.json["checks"]["idempotency_cache"].startswith("degraded")

    account = open_account(client)
    wakes, cache_writes = _errors("wake"), _errors("cache_write")
    response = web.post(
        "/v1/deposits",
        json={"account_id": account["id"], "amount": 125},
        headers={"Idempotency-Key": "redis-down-1"},
    )
    assert response.status_code == 202, response.data
    transfer_id = response.json["id"]
    assert app.extensions["ledger"].background.flush(flush_timeout_seconds)
    # The wake-up could not be published and the answer could not be copied: both counted.
    assert _errors("wake") == wakes + 1
    assert _errors("cache_write") == cache_writes + 1
    # The replay is answered by PostgreSQL.
    again = web.post(
        "/v1/deposits",
        json={"account_id": account["id"], "amount": 125},
        headers={"Idempotency-Key": "redis-down-1"},
    )
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"

    assert wait_final(engine, [transfer_id]) == {transfer_id: "posted"}
    with engine.connect() as connection:
        waited = connection.scalar(
            text("SELECT extract(epoch FROM posted_at - created_at) FROM transfers WHERE id = :id"),
            {"id": transfer_id},
        )
    # Old enough to sweep: the sweeper, not a wake-up, had it posted.
    assert waited >= TEST_SWEEPER_PENDING_AGE_MIN_SECONDS
    assert client.get(f"/v1/accounts/{account['id']}").json()["balance"]["posted"] == 125


def test_a_webhook_enqueue_the_broker_refuses_is_counted_not_raised(
    without_redis: tuple[Any, Any],
) -> None:
    app, _ = without_redis
    services = app.extensions["ledger"]
    before = _errors("enqueue")
    services.enqueue_deliveries(["wd_never_published"])  # returns at once: after-response work
    assert services.background.flush(flush_timeout_seconds)
    assert _errors("enqueue") == before + 1


def test_not_ready_only_when_postgresql_does_not_answer(settings: Settings, admin_key: str) -> None:
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres"
    with _app(dataclasses.replace(settings, database_url=dead), admin_key) as (_, web):
        response = web.get("/ready")
        assert response.status_code == 503
        assert response.mimetype == "application/problem+json"
        assert response.json["code"] == "not_ready"
        assert response.json["checks"]["postgresql"].startswith("error")
        assert response.json["checks"]["redis"] == "ok"
