"""Celery settings, all explicit. Values a deployment changes come from the environment.

Why each matters for money:
- acks late + reject on worker lost: a task is removed from the queue only after it ran,
  so a crashed worker's task is delivered again (posting is idempotent, so that is safe);
- prefetch 1: a worker holds one unacknowledged task per process, not a batch it may lose;
- time limits well below the visibility timeout: Redis redelivers an unacknowledged task
  after the visibility timeout, so a task must be long finished (or killed) by then.
"""

import os

from kombu import Queue

from ledger_core.config import posting_queue, redis_url_from_env

POSTING_SHARDS = int(os.environ.get("POSTING_SHARDS", "1"))
POSTING_QUEUES = [posting_queue(shard, POSTING_SHARDS) for shard in range(POSTING_SHARDS)]

broker_url = os.environ.get("CELERY_BROKER_URL") or redis_url_from_env()
broker_connection_retry_on_startup = True
broker_connection_timeout = 4
broker_transport_options = {
    "visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT_SECONDS", "300")),
    "socket_timeout": 5,
    "socket_connect_timeout": 5,
}
# The API must answer fast even when the broker is down: give up publishing quickly and
# let the sweeper re-enqueue the committed transfer.
task_publish_retry = True
task_publish_retry_policy = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
# No results are read: the database holds every outcome.
task_ignore_result = True
result_backend = None

task_acks_late = True
task_reject_on_worker_lost = True
# A task that raised (or hit its time limit) is acknowledged, not requeued blindly: each
# task decides its own retries, and the sweeper and the webhook scheduler find what is
# left in PostgreSQL. (Celery 5.7 settings; tests/integration/test_deploy_files.py checks
# that every lowercase name here is one of Celery's.)
task_acks_on_failure = True
task_acks_on_timeout = True
worker_prefetch_multiplier = 1
task_soft_time_limit = int(os.environ.get("CELERY_TASK_SOFT_TIME_LIMIT_SECONDS", "50"))
task_time_limit = int(os.environ.get("CELERY_TASK_TIME_LIMIT_SECONDS", "60"))
# Recycle processes now and then so that a slow leak cannot grow without bound.
worker_max_tasks_per_child = 10_000

task_default_queue = "housekeeping"
# Declared, so that Flower lists every queue's length even while no worker consumes one.
task_queues = tuple(Queue(name) for name in (*POSTING_QUEUES, "webhooks", "housekeeping"))
task_routes = {
    # Wake-ups of the posting workers; the publisher names the shard's queue.
    "ledger.post_pending": {"queue": POSTING_QUEUES[0]},
    # Slow receivers must never hold up postings: deliveries have their own queue and
    # their own worker processes.
    "ledger.deliver_webhook": {"queue": "webhooks"},
    # Periodic work has its own queue and worker, so that neither a posting backlog nor
    # a webhook backlog can delay it past its expiry.
    "ledger.sweep_pending_transfers": {"queue": "housekeeping"},
    "ledger.enqueue_due_webhooks": {"queue": "housekeeping"},
    "ledger.reconcile": {"queue": "housekeeping"},
    "ledger.prune_idempotency_keys": {"queue": "housekeeping"},
    "ledger.release_due_holds": {"queue": "housekeeping"},
}

# Logging is ours (JSON with request, task and transfer ids): see workers/celery_app.py.
worker_hijack_root_logger = False

# Flower shows tasks only when workers send events.
worker_send_task_events = True
task_send_sent_event = True

timezone = "UTC"
enable_utc = True
# A periodic run that could not start in time is useless later: the next one covers it.
# Each expires well before its next run would pile up behind it.
FREQUENT_TASK_EXPIRES_SECONDS = 30  # sweeper, webhook scheduler, hold releases
RECONCILE_TASK_EXPIRES_SECONDS = 120
PRUNE_TASK_EXPIRES_SECONDS = 600
PRUNE_INTERVAL_SECONDS = 3600.0
beat_schedule = {
    "sweep-pending-transfers": {
        "task": "ledger.sweep_pending_transfers",
        "schedule": float(os.environ.get("SWEEPER_INTERVAL_SECONDS", "10")),
        "options": {"expires": FREQUENT_TASK_EXPIRES_SECONDS},
    },
    "enqueue-due-webhooks": {
        "task": "ledger.enqueue_due_webhooks",
        "schedule": float(os.environ.get("WEBHOOK_SCHEDULER_INTERVAL_SECONDS", "5")),
        "options": {"expires": FREQUENT_TASK_EXPIRES_SECONDS},
    },
    "reconcile-books": {
        "task": "ledger.reconcile",
        "schedule": float(os.environ.get("RECONCILE_INTERVAL_SECONDS", "300")),
        "options": {"expires": RECONCILE_TASK_EXPIRES_SECONDS},
    },
    "release-due-holds": {
        "task": "ledger.release_due_holds",
        "schedule": float(os.environ.get("HOLDS_INTERVAL_SECONDS", "5")),
        "options": {"expires": FREQUENT_TASK_EXPIRES_SECONDS},
    },
    "prune-idempotency-keys": {
        "task": "ledger.prune_idempotency_keys",
        "schedule": PRUNE_INTERVAL_SECONDS,
        "options": {"expires": PRUNE_TASK_EXPIRES_SECONDS},
    },
}
