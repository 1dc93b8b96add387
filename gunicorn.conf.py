"""gunicorn settings read from the working directory; the Procfile passes the rest."""

import os

from prometheus_client import multiprocess


def child_exit(server: object, worker: object) -> None:
    # A dead worker's live gauges must not be summed into /metrics.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]


# gunicorn 25+ opens a control socket at ~/.gunicorn/gunicorn.ctl by default: one path for
# every gunicorn of the user, so a second server (tests, benchmarks, make run) would take
# it over and delete it on exit. Nothing here uses it.
control_socket_disable = True
