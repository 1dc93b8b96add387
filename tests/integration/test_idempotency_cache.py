"""PostgreSQL answers replays when Redis lost its copy; Redis never outlives a stored key;
and a transfer's key outlives every cache, so a late retry cannot move money twice."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from ledger_core.adapters.redis_cache import KEY_PREFIX
from ledger_core.domain import limits
from ledger_core.service_layer import posting
from tests.conftest import wait_final

flush_timeout_seconds = 5


def _client(app: Any, admin_key: str) -> Any:
    web = app.test_client()
    web.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key}"
    return web


def _flush(app: Any) -> None:
    # Cache writes happen after the response, on the API process's background thread.
    assert app.extensions["ledger"].background.flush(flush_timeout_seconds)


def test_account_replay_survives_a_lost_cache_and_refills_it_for_the_time_left(
    app: Any, admin_key: str, engine: Engine
) -> None:
    web = _client(app, admin_key)
    redis = app.extensions["ledger"].cache.client
    headers = {"Idempotency-Key": "cache-ttl-1"}
    body = {"currency": "USD", "name": "cached"}

    first = web.post("/v1/accounts", json=body, headers=headers)
    assert first.status_code == 201
    _flush(app)
    [cache_key] = redis.keys(f"{KEY_PREFIX}*:cache-ttl-1")
    assert (
        limits.idempotency_ttl_seconds - 5 <= redis.ttl(cache_key) <= limits.idempotency_ttl_seconds
    )

    # Redis restarted empty, and 23 hours went by for the stored key.
    redis.delete(cache_key)
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE idempotency_keys SET created_at = now() - interval '23 hours'"
                " WHERE key = 'cache-ttl-1'"
            )
        )
    again = web.post("/v1/accounts", json=body, headers=headers)
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json
    _flush(app)
    assert 3500 <= redis.ttl(cache_key) <= 3600


def test_transfer_key_outlives_the_cache_and_the_24_hours(
    app: Any, admin_key: str, engine: Engine, uow_factory: Any
) -> None:
    web = _client(app, admin_key)
    redis = app.extensions["ledger"].cache.client
    account = web.post("/v1/accounts", json={"currency": "USD"}).json["id"]
    headers = {"Idempotency-Key": "late-retry-1"}
    body = {"account_id": account, "amount": 12}

    first = web.post("/v1/deposits", json=body, headers=headers)
    assert first.status_code == 202
    _flush(app)
    [cache_key] = redis.keys(f"{KEY_PREFIX}*:late-retry-1")

    # Redis lost its copy, and the client retries two days later.
    redis.delete(cache_key)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE transfers SET created_at = now() - interval '2 days' WHERE id = :id"),
            {"id": first.json["id"]},
        )
    again = web.post("/v1/deposits", json=body, headers=headers)
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json["id"] == first.json["id"]
    assert again.json["status"] == "pending"  # the first answer, whatever happened since
    other = web.post("/v1/deposits", json={**body, "amount": 13}, headers=headers)
    assert other.status_code == 422
    assert other.json["code"] == "idempotency_key_reused"
    with engine.connect() as connection:
        count = connection.scalar(
            text("SELECT count(*) FROM transfers WHERE destination_account_id = :a"),
            {"a": account},
        )
    assert count == 1
    # Post it, so the books the next tests reconcile hold no leftovers. A session worker
    # started by an earlier test may have posted it already (the wake-up is real).
    posting.post_transfers(uow_factory, [first.json["id"]])
    assert wait_final(engine, [first.json["id"]]) == {first.json["id"]: "posted"}
