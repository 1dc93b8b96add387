"""PostgreSQL answers replays when Redis lost its copy, and Redis never outlives the key."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from ledger_core.adapters.redis_cache import KEY_PREFIX
from ledger_core.domain import limits


def test_replay_survives_a_lost_cache_and_refills_it_for_the_time_left(
    app: Any, admin_key: str, engine: Engine
) -> None:
    web = app.test_client()
    web.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key}"
    redis = app.extensions["ledger"].redis
    account = web.post("/v1/accounts", json={"currency": "USD"}).json["id"]
    headers = {"Idempotency-Key": "cache-ttl-1"}
    body = {"account_id": account, "amount": 12}

    first = web.post("/v1/deposits", json=body, headers=headers)
    assert first.status_code == 202
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
    again = web.post("/v1/deposits", json=body, headers=headers)
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json
    assert 3500 <= redis.ttl(cache_key) <= 3600
    with engine.connect() as connection:
        count = connection.scalar(
            text("SELECT count(*) FROM transfers WHERE destination_account_id = :a"),
            {"a": account},
        )
    assert count == 1
