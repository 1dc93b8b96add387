"""gunicorn settings read from the working directory; the Procfile passes the rest."""

import os

from prometheus_client import multiprocess


def child_exit(server: object, worker: object) -> None:
    # A dead worker's live gauges must not be summed into /metrics.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]
