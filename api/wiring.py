"""Builds the adapters one API process uses, once, from settings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import redis
import structlog
from sqlalchemy import Engine

from ledger_core.adapters.background import BackgroundThread
from ledger_core.adapters.database import make_engine
from ledger_core.adapters.group_commit import GroupCommitter
from ledger_core.adapters.metrics import background_errors_total
from ledger_core.adapters.redis_cache import RedisIdempotencyCache, make_redis
from ledger_core.adapters.sql import SqlUnitOfWorkFactory
from ledger_core.adapters.wakeups import PostingWakeups
from ledger_core.adapters.webhook_http import AddressGuard
from ledger_core.config import Settings, posting_queue
from ledger_core.service_layer import accept
from ledger_core.service_layer.access import ApiKeyCache
from ledger_core.service_layer.ports import EnqueueDeliveries, StorePending, WakePosting
from workers.celery_app import (
    DELIVER_WEBHOOK_TASK,
    POST_PENDING_TASK,
    REQUEST_ID_HEADER,
    WEBHOOKS_QUEUE,
    make_celery,
)


@dataclass
class LedgerServices:
    engine: Engine
    redis: redis.Redis
    uow_factory: SqlUnitOfWorkFactory
    api_keys: ApiKeyCache
    cache: RedisIdempotencyCache
    # Non-blocking: the background thread publishes the wake-up after the response.
    wake: WakePosting
    # Concurrent requests of this process share the transaction that stores them.
    store_pending: StorePending
    background: BackgroundThread
    enqueue_deliveries: EnqueueDeliveries
    url_guard: AddressGuard
    settings: Settings


def build_services(settings: Settings, broker_url: str | None = None) -> LedgerServices:
    engine = make_engine(settings)
    uow_factory = SqlUnitOfWorkFactory(engine)
    redis_client = make_redis(
        settings.redis_url, socket_timeout_seconds=settings.redis_socket_timeout_seconds
    )
    # The same broker the workers consume: CELERY_BROKER_URL when set, else REDIS_URL.
    celery = make_celery(broker_url or os.environ.get("CELERY_BROKER_URL") or settings.redis_url)

    def headers() -> dict[str, str | None]:
        return {REQUEST_ID_HEADER: structlog.contextvars.get_contextvars().get("request_id")}

    def publish_wake(shard: int) -> None:
        celery.send_task(
            POST_PENDING_TASK, args=[shard], queue=posting_queue(shard, settings.posting_shards)
        )

    def enqueue_deliveries(delivery_ids: list[str]) -> None:
        for delivery_id in delivery_ids:
            celery.send_task(
                DELIVER_WEBHOOK_TASK, args=[delivery_id], queue=WEBHOOKS_QUEUE, headers=headers()
            )

    wakeups = PostingWakeups(redis_client, publish_wake)
    background = BackgroundThread(
        wakeups.wake, on_error=lambda kind: background_errors_total.labels(kind).inc()
    )
    return LedgerServices(
        engine=engine,
        redis=redis_client,
        uow_factory=uow_factory,
        api_keys=ApiKeyCache(uow_factory),
        cache=RedisIdempotencyCache(redis_client, submit=background.submit),
        wake=background.wake,
        store_pending=GroupCommitter(partial(accept.store_pending, uow_factory)),
        background=background,
        enqueue_deliveries=enqueue_deliveries,
        url_guard=AddressGuard(development=settings.development),
        settings=settings,
    )
