"""The Celery application. Producers (the API) and consumers (workers) share it."""

from __future__ import annotations

import os
from typing import Any

import structlog
from celery import Celery, signals
from kombu.transport import redis as kombu_redis
from prometheus_client import multiprocess, start_http_server

from ledger_core.adapters.logs import configure_logging
from ledger_core.adapters.metrics import registry_for_scrape

WEBHOOKS_QUEUE = "webhooks"
HOUSEKEEPING_QUEUE = "housekeeping"
POST_PENDING_TASK = "ledger.post_pending"
DELIVER_WEBHOOK_TASK = "ledger.deliver_webhook"
# Carries the API request's id to the task, so one id follows a transfer through the logs.
REQUEST_ID_HEADER = "ledger_request_id"


def _close_redis_channels_whatever_the_poll() -> None:
    """Let a worker survive its broker going away while it waits in BRPOP.

    kombu 5.7's Redis channel starts its close by reading the pending BRPOP reply; with
    the connection gone that read raises, and the channel stays open. Celery 5.7 then
    drops the transport (`collect`) and closes the connection again: the retried close
    restores the unacknowledged messages through the transport that is gone, raises
    AttributeError, and the worker exits ("Unrecoverable error") instead of reconnecting
    (tests/e2e/test_faults.py). Finish the close at once, while the transport is there;
    if Redis is down, the messages stay in its unacked set until their visibility timeout.
    """
    close = kombu_redis.Channel.close

    def close_despite_lost_poll(channel: Any) -> None:
        try:
            close(channel)
        except channel.connection_errors:
            if channel.closed:
                raise
            close(channel)  # the failed read ended the poll: this one closes the channel

    kombu_redis.Channel.close = close_despite_lost_poll


_close_redis_channels_whatever_the_poll()


def make_celery(broker_url: str | None = None) -> Celery:
    """The app as configured by celeryconfig, or publishing to `broker_url` if given."""
    celery = Celery("ledger")
    celery.config_from_object("celeryconfig")
    if broker_url is not None:
        # Celery reads the environment's CELERY_BROKER_URL before `broker_url` (whatever
        # the code sets); the read and write URLs come first, so an explicit URL wins.
        celery.conf.update(
            broker_url=broker_url, broker_read_url=broker_url, broker_write_url=broker_url
        )
    return celery


app = make_celery()
app.autodiscover_tasks(["workers"], related_name="tasks", force=True)


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    # Connecting here stops Celery from installing its own plain-text handlers.
    configure_logging("celery")


@signals.task_prerun.connect
def _bind_task_context(task_id: str, task: Any, **_: Any) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        task_id=task_id,
        task=task.name,
        request_id=getattr(task.request, REQUEST_ID_HEADER, None),
    )


@signals.task_postrun.connect
def _clear_task_context(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()


@signals.worker_init.connect
def _serve_metrics(**_: Any) -> None:
    """With METRICS_PORT set, the worker's main process serves the metrics its pool
    processes record (used where the API cannot read their files, e.g. containers)."""
    port = os.environ.get("METRICS_PORT")
    if port:
        address = os.environ.get("METRICS_ADDRESS", "127.0.0.1")
        start_http_server(int(port), addr=address, registry=registry_for_scrape())


@signals.worker_process_shutdown.connect
def _forget_dead_process(pid: int | None = None, **_: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid or os.getpid())
