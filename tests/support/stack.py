"""A private embedded PostgreSQL + Valkey whose servers a test may stop and start again on
the same ports, each by its PID, while the other keeps running."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from devstack import start_stack

server_gone_timeout_seconds = 20
server_gone_poll_seconds = 0.05


def _wait_gone(pid: int, child: subprocess.Popen[bytes] | None) -> None:
    """Bounded wait until `pid` has exited (reaped when it is our child)."""
    deadline = time.monotonic() + server_gone_timeout_seconds
    while time.monotonic() < deadline:
        if child is not None:
            if child.poll() is not None:
                return
        else:
            try:
                # A zombie has exited: the postmaster is no child of ours to reap.
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    return
            except psutil.NoSuchProcess:
                return
        time.sleep(server_gone_poll_seconds)
    raise AssertionError(f"PID {pid} still alive {server_gone_timeout_seconds} s after its signal")


class RestartableStack:
    """Servers of one data dir; `stop_*` signals one server by PID, `start_*` brings it
    back on its old port (devstack reuses the one still running)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._stack = start_stack(data_dir, durable=False)
        # Valkey is our child only when this object started it: keep its Popen to reap it.
        self._valkey: subprocess.Popen[bytes] | None = self._stack._valkey_process
        self.pg_port, self.redis_port = self._stack.pg_port, self._stack.redis_port
        self.pg_running = self.redis_running = True

    @property
    def database_url(self) -> str:
        return self._stack.database_url

    @property
    def redis_url(self) -> str:
        return self._stack.redis_url

    @property
    def pg_pid(self) -> int:
        return self._stack.pg_pid

    @property
    def redis_pid(self) -> int:
        return self._stack.redis_pid

    def stop_postgres(self) -> None:
        """SIGINT, PostgreSQL's fast shutdown: open transactions abort, clients are cut off."""
        os.kill(self.pg_pid, signal.SIGINT)
        _wait_gone(self.pg_pid, None)
        self.pg_running = False

    def stop_valkey(self, sig: int = signal.SIGKILL) -> None:
        os.kill(self.redis_pid, sig)
        _wait_gone(self.redis_pid, self._valkey)
        self.redis_running = False

    def start_postgres(self) -> None:
        self._restart()
        self.pg_running = True

    def start_valkey(self) -> None:
        self._restart()
        self.redis_running = True

    def _restart(self) -> None:
        started = start_stack(self.data_dir, self.pg_port, self.redis_port, durable=False)
        assert (started.pg_port, started.redis_port) == (self.pg_port, self.redis_port)
        if started._valkey_process is not None:
            self._valkey = started._valkey_process
        self._stack = started

    def stop(self) -> None:
        """Stop whichever servers are still running, by their PIDs."""
        try:
            if self.redis_running:
                with contextlib.suppress(ProcessLookupError):
                    self.stop_valkey(signal.SIGTERM)
        finally:
            if self.pg_running:
                # Stack.stop checks the PIDs still belong to this data dir before it
                # signals them.
                self._stack.stop()
                self.pg_running = False
