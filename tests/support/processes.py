"""Start and stop the project's real processes (Celery worker, beat, API) for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn

import httpx
import psutil

VENV_BIN = Path(sys.executable).parent
start_timeout_seconds = 60
stop_timeout_seconds = 15
worker_grace_period_seconds = 75


LEDGER = str(VENV_BIN / "ledger")
ledger_cli_timeout_seconds = 60


def run_ledger(
    *args: str,
    env: Mapping[str, str] | None = None,
    database_url: str | None = None,
    timeout_seconds: float = ledger_cli_timeout_seconds,
) -> subprocess.CompletedProcess[str]:
    """The `ledger` CLI as an operator runs it: in `env` (this process's by default), on
    `database_url` if given; its output captured, its exit code left to the caller."""
    environment = dict(os.environ if env is None else env)
    if database_url is not None:
        environment["DATABASE_URL"] = database_url
    return subprocess.run(
        [LEDGER, *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout_seconds,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A child process with its log file, stopped by its PID."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, ready: Callable[[], bool], what: str) -> None:
        """Wait (bounded) until `ready()`; a process that never gets there is stopped
        before the error is raised, so that no caller leaves it running."""
        deadline = time.monotonic() + start_timeout_seconds
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                self._give_up("exited early")
            if ready():
                return
            time.sleep(0.2)
        self._give_up(f"{what} not reached")

    def _give_up(self, why: str) -> NoReturn:
        self.stop()
        raise RuntimeError(f"{self.name}: {why}:\n{self.log_text()[-4000:]}")

    def stop(
        self, sig: int = signal.SIGTERM, timeout_seconds: float = stop_timeout_seconds
    ) -> None:
        """SIGTERM (graceful), then SIGKILL the whole process group if it lingers."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(stop_timeout_seconds)
        # Pool children may outlive a killed parent: end whatever is left of the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self._log.close()

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.pid).children(recursive=True)


def start_worker(
    env: dict[str, str], log_dir: Path, *, name: str, queue: str, concurrency: int = 2
) -> Process:
    process = Process(
        name,
        [
            str(VENV_BIN / "celery"),
            "-A",
            "workers.celery_app",
            "worker",
            "-Q",
            queue,
            "-n",
            f"{name}-{os.getpid()}@127.0.0.1",
            "--pool",
            "prefork",
            "--concurrency",
            str(concurrency),
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        ],
        env,
        log_dir,
    )
    process.wait_until(lambda: " ready." in process.log_text(), "worker ready")
    return process


class ManagedWorker:
    """A worker that a test may restart; other tests see whichever process is current."""

    def __init__(self, env: dict[str, str], log_dir: Path, *, name: str, queue: str) -> None:
        self._args = (env, log_dir)
        self._name, self._queue = name, queue
        self.generation = 0
        self.current = start_worker(env, log_dir, name=name, queue=queue)

    def restart(self, sig: int = signal.SIGTERM) -> int:
        """Stop the current process with `sig` (warm shutdown for SIGTERM), start a new
        one, and return the old one's exit code."""
        # As long as a deployment's grace period: a warm shutdown may take a while.
        self.current.stop(sig, timeout_seconds=worker_grace_period_seconds)
        code = self.current.popen.returncode
        self.generation += 1
        self.current = start_worker(
            *self._args, name=f"{self._name}{self.generation}", queue=self._queue
        )
        return code

    def children(self) -> list[psutil.Process]:
        return self.current.children()

    def log_text(self) -> str:
        return self.current.log_text()

    def stop(self) -> None:
        self.current.stop()


def start_beat(env: dict[str, str], log_dir: Path) -> Process:
    return Process(
        "beat",
        [
            str(VENV_BIN / "celery"),
            "-A",
            "workers.celery_app",
            "beat",
            "--schedule",
            str(log_dir / "beat-schedule"),
            "--loglevel",
            "INFO",
        ],
        env,
        log_dir,
    )


def start_api(env: dict[str, str], log_dir: Path) -> tuple[Process, str]:
    port = free_port()
    process = Process(
        "api",
        [
            str(VENV_BIN / "gunicorn"),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--worker-class",
            "gthread",
            "--threads",
            "16",
            "--graceful-timeout",
            "10",
            "api:create_app()",
        ],
        env,
        log_dir,
    )
    base_url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base_url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    process.wait_until(healthy, "API healthy")
    return process, base_url
