"""Builds the adapters one API process uses, once, from settings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import redis
import structlog
from sqlalchemy import Engine

from ledger_core.adapters.database import make_engine
from ledger_core.adapters.redis_cache import RedisIdempotencyCache, make_redis
from ledger_core.adapters.sql import SqlUnitOfWork
from ledger_core.adapters.webhook_http import AddressGuard
from ledger_core.config import Settings
from ledger_core.service_layer.ports import EnqueueDeliveries, EnqueuePosting, UnitOfWorkFactory
from workers.celery_app import (
    DELIVER_WEBHOOK_TASK,
    POST_TRANSFER_TASK,
    REQUEST_ID_HEADER,
    TRANSFERS_QUEUE,
    WEBHOOKS_QUEUE,
    make_celery,
)


@dataclass
class LedgerServices:
    engine: Engine
    redis: redis.Redis
    uow_factory: UnitOfWorkFactory
    cache: RedisIdempotencyCache
    enqueue: EnqueuePosting
    enqueue_deliveries: EnqueueDeliveries
    url_guard: AddressGuard
    settings: Settings


def build_services(settings: Settings, broker_url: str | None = None) -> LedgerServices:
    engine = make_engine(settings)
    redis_client = make_redis(
        settings.redis_url, socket_timeout_seconds=settings.redis_socket_timeout_seconds
    )
    # The same broker the workers consume: CELERY_BROKER_URL when set, else REDIS_URL.
    celery = make_celery(broker_url or os.environ.get("CELERY_BROKER_URL") or settings.redis_url)

    def headers() -> dict[str, str | None]:
        return {REQUEST_ID_HEADER: structlog.contextvars.get_contextvars().get("request_id")}

    def enqueue(transfer_id: str) -> None:
        celery.send_task(
            POST_TRANSFER_TASK, args=[transfer_id], queue=TRANSFERS_QUEUE, headers=headers()
        )

    def enqueue_deliveries(delivery_ids: list[str]) -> None:
        for delivery_id in delivery_ids:
            celery.send_task(
                DELIVER_WEBHOOK_TASK, args=[delivery_id], queue=WEBHOOKS_QUEUE, headers=headers()
            )

    return LedgerServices(
        engine=engine,
        redis=redis_client,
        uow_factory=partial(SqlUnitOfWork, engine),
        cache=RedisIdempotencyCache(redis_client),
        enqueue=enqueue,
        enqueue_deliveries=enqueue_deliveries,
        url_guard=AddressGuard(development=settings.development),
        settings=settings,
    )
