"""The Celery application. Producers (the API) and consumers (workers) share it."""

from __future__ import annotations

from celery import Celery

TRANSFERS_QUEUE = "transfers"
WEBHOOKS_QUEUE = "webhooks"
POST_TRANSFER_TASK = "ledger.post_transfer"
DELIVER_WEBHOOK_TASK = "ledger.deliver_webhook"


def make_celery(broker_url: str | None = None) -> Celery:
    celery = Celery("ledger")
    celery.config_from_object("celeryconfig")
    if broker_url is not None:
        celery.conf.broker_url = broker_url
    return celery


app = make_celery()
app.autodiscover_tasks(["workers"], related_name="tasks", force=True)
