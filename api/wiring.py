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

log = structlog.get_logger(__name__)
# Broker URLs the queue-depth gauge can read with a plain Redis client.
REDIS_BROKER_SCHEMES = ("redis", "rediss", "unix")


@dataclass
class LedgerServices:
    engine: Engine
    # REDIS_URL: the wake-up flags and the last reconciliation result.
    redis: redis.Redis
    # The broker's Redis, for the queue-depth gauge (None when the broker is not Redis).
    broker_redis: redis.Redis | None
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


def _count_error(kind: str) -> None:
    background_errors_total.labels(kind).inc()


def build_services(settings: Settings, broker_url: str | None = None) -> LedgerServices:
    engine = make_engine(settings)
    uow_factory = SqlUnitOfWorkFactory(engine)
    timeout_seconds = settings.redis_socket_timeout_seconds
    redis_client = make_redis(settings.redis_url, socket_timeout_seconds=timeout_seconds)
    # Its own logical database (or server): evicting copies there never touches the
    # broker's queues, and a full cache refuses only copies.
    cache_client = make_redis(
        settings.idempotency_cache_url, socket_timeout_seconds=timeout_seconds
    )
    # The same broker the workers consume: CELERY_BROKER_URL when set, else REDIS_URL.
    broker_url = broker_url or os.environ.get("CELERY_BROKER_URL") or settings.redis_url
    celery = make_celery(broker_url)
    broker_redis: redis.Redis | None = redis_client
    if broker_url != settings.redis_url:
        is_redis = broker_url.split("://", 1)[0] in REDIS_BROKER_SCHEMES
        broker_redis = (
            make_redis(broker_url, socket_timeout_seconds=timeout_seconds) if is_redis else None
        )

    def headers() -> dict[str, str | None]:
        return {REQUEST_ID_HEADER: structlog.contextvars.get_contextvars().get("request_id")}

    def publish_wake(shard: int) -> None:
        celery.send_task(
            POST_PENDING_TASK, args=[shard], queue=posting_queue(shard, settings.posting_shards)
        )

    wakeups = PostingWakeups(redis_client, publish_wake)
    background = BackgroundThread(wakeups.wake, on_error=_count_error)

    def enqueue_deliveries(delivery_ids: list[str]) -> None:
        # After the response, like wake-ups: a broker that is down must not hold the
        # request (or turn it into a 500) once the delivery is committed as due; the
        # webhook scheduler enqueues it again after WEBHOOK_REQUEUE_AFTER_SECONDS.
        task_headers = headers()

        def publish() -> None:
            for delivery_id in delivery_ids:
                try:
                    celery.send_task(
                        DELIVER_WEBHOOK_TASK,
                        args=[delivery_id],
                        queue=WEBHOOKS_QUEUE,
                        headers=task_headers,
                    )
                except Exception:
                    _count_error("enqueue")
                    log.warning(
                        "enqueue of webhook delivery failed; the scheduler will",
                        delivery_id=delivery_id,
                        exc_info=True,
                    )

        background.submit(publish)

    return LedgerServices(
        engine=engine,
        redis=redis_client,
        broker_redis=broker_redis,
        uow_factory=uow_factory,
        api_keys=ApiKeyCache(uow_factory),
        cache=RedisIdempotencyCache(cache_client, submit=background.submit, on_error=_count_error),
        wake=background.wake,
        store_pending=GroupCommitter(partial(accept.store_pending, uow_factory)),
        background=background,
        enqueue_deliveries=enqueue_deliveries,
        url_guard=AddressGuard(
            development=settings.development,
            dns_timeout_seconds=settings.webhook_dns_timeout_seconds,
        ),
        settings=settings,
    )
