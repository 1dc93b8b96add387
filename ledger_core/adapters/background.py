"""Work that a response need not wait for, done by one daemon thread per process.

The API commits a transfer and answers; waking the posting workers and copying the answer
into the Redis cache happen here, so a slow or unreachable Redis never holds a request.
Both are safe to lose: the sweeper wakes posting, and PostgreSQL answers replays.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# Jobs waiting for the thread. Beyond this, new jobs are dropped (and counted): only
# jobs that are safe to lose are ever submitted.
background_jobs_max = 10_000
# After waking a shard, wait this long before waking it again: under load, one wake-up
# then covers every transfer committed meanwhile.
wake_interval_min_seconds = 0.002


class BackgroundThread:
    """A bounded queue of jobs plus coalesced wake-ups, served by one daemon thread that
    is started on first use in each process (never inherited across a fork)."""

    def __init__(
        self,
        wake: Callable[[int], None],
        *,
        name: str = "after-commit",
        jobs_max: int = background_jobs_max,
        wake_interval_min_seconds: float = wake_interval_min_seconds,
        on_error: Callable[[str], None] = lambda kind: None,
    ) -> None:
        self._wake = wake
        self._name = name
        self._interval = wake_interval_min_seconds
        self._on_error = on_error
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue(maxsize=jobs_max)
        self._shards: set[int] = set()
        self._lock = threading.Lock()
        self._signal = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        # Shards taken off the set whose wake-up is still being published: flush() waits
        # for them too, not only for the set to be empty.
        self._waking = 0
        self.dropped = 0

    def wake(self, shard: int) -> None:
        """Ask for the posting workers of `shard` to be woken soon; never blocks."""
        with self._lock:
            self._shards.add(shard)
        self._start()
        self._signal.set()

    def submit(self, job: Callable[[], None]) -> None:
        """Run `job` soon on the thread, or drop it if the queue is full; never blocks."""
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self.dropped += 1
            self._on_error("dropped")
            return
        self._start()
        self._signal.set()

    def flush(self, timeout_seconds: float) -> bool:
        """Wait (bounded) until nothing is waiting; for tests and orderly shutdown."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            with self._lock:
                idle = not self._shards and not self._waking and self._jobs.unfinished_tasks == 0
            if idle:
                return True
            time.sleep(0.005)
        return False

    def _start(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._signal.wait()
            self._signal.clear()
            with self._lock:
                shards, self._shards = self._shards, set()
                self._waking = len(shards)
            for shard in sorted(shards):
                try:
                    self._wake(shard)
                except Exception:
                    self._on_error("wake")
                    log.exception("waking posting shard %d failed; the sweeper will", shard)
                finally:
                    with self._lock:
                        self._waking -= 1
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                try:
                    job()
                except Exception:
                    self._on_error("job")
                    log.exception("background job failed")
                finally:
                    self._jobs.task_done()
            if shards:
                time.sleep(self._interval)
