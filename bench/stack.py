"""The system under test, started and stopped by the benchmark: servers, database, API,
posting workers and the hello-world ceiling, each a child process stopped by its PID.

Copies the approach of tests/support/processes.py (the bench does not import test code):
every child runs in its own session with its log in the run's directory, so a stop can
end the whole process group, pool children included.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
from alembic import command
from alembic.config import Config

from devstack import create_database, start_stack
from ledger_core.adapters.database import make_engine
from ledger_core.adapters.sql import SqlUnitOfWorkFactory
from ledger_core.config import Settings, normalize_database_url
from ledger_core.service_layer.access import Scope, create_api_key

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"
start_timeout_seconds = 60
# A warm shutdown lets a posting task finish its batch; the bench stops workers only
# once they are idle, so this is rarely waited for.
stop_timeout_seconds = 30
kill_wait_seconds = 10
poll_interval_seconds = 0.2
health_timeout_seconds = 1
# The Procfile's web line: the API and the hello-world ceiling are served alike.
web_workers = 2
web_threads = 16  # as the Procfile (WEB_THREADS)
posting_concurrency = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class Process:
    """A child process with its log file, stopped by its PID (and its process group)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self._log_offset = self._log.tell()
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_text(self) -> str:
        """What this process wrote (the file may hold earlier processes' lines too)."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def wait_until(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + start_timeout_seconds
        for _ in range(math.ceil(start_timeout_seconds / poll_interval_seconds) + 1):
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_text()[-4000:]}")
            if ready():
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(poll_interval_seconds)
        raise RuntimeError(f"{self.name}: {what} not reached:\n{self.log_text()[-4000:]}")

    def stop(self) -> bool:
        """SIGTERM (graceful), then SIGKILL the whole process group if it lingers; return
        whether it had to be killed."""
        killed = False
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(stop_timeout_seconds)
            except subprocess.TimeoutExpired:
                killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(kill_wait_seconds)
        # Pool children may outlive their parent: end whatever is left of the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self._log.close()
        return killed


def process_env(database_url: str, redis_url: str, metrics_dir: Path) -> dict[str, str]:
    """The environment of the API and the workers, as tests/conftest.py builds it, minus
    the test-only shortcuts: posting keeps its production settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        # Posting is measured with its production defaults (batches of 1,000, one shard).
        if not key.startswith("POSTING_")
    }
    env.update(
        {
            # A fresh directory: files of another run would be summed into /metrics.
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    env.pop("CELERY_BROKER_URL", None)  # the broker is the REDIS_URL above
    # Nothing of ours listens beyond the servers the bench starts on loopback.
    env.pop("METRICS_PORT", None)
    env.pop("METRICS_ADDRESS", None)
    return env


def start_web(name: str, app: str, env: dict[str, str], log_dir: Path) -> tuple[Process, str]:
    """gunicorn as the Procfile's web line runs it, bound to loopback on a free port."""
    port = free_port()
    argv = [
        str(VENV_BIN / "gunicorn"),
        "--bind",
        f"{LOOPBACK}:{port}",
        "--workers",
        str(web_workers),
        "--worker-class",
        "gthread",
        "--threads",
        str(web_threads),
        "--graceful-timeout",
        "30",
        "--timeout",
        "60",
        app,
    ]
    # gunicorn >= 25.1 opens a control socket at $XDG_RUNTIME_DIR/gunicorn.ctl, else at
    # ~/.gunicorn/gunicorn.ctl, shared by every gunicorn of the user: a private directory
    # per process keeps the bench's servers from replacing (and, on exit, deleting) the
    # socket of another gunicorn on the machine, or of each other.
    runtime_dir = log_dir.parent / "runtime" / name
    runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    process = Process(name, argv, {**env, "XDG_RUNTIME_DIR": str(runtime_dir)}, log_dir)
    base_url = f"http://{LOOPBACK}:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base_url}/health", timeout=health_timeout_seconds).is_success
        except httpx.HTTPError:
            return False

    process.wait_until(healthy, "healthy")
    return process, base_url


class PostingWorkers:
    """The Procfile's worker line, which the bench stops and starts between stages."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self._env, self._log_dir = env, log_dir
        self._generation = 0
        self.current: Process | None = None

    @property
    def running(self) -> bool:
        return self.current is not None

    def start(self) -> float:
        """Start the workers; return the monotonic time at which they were ready."""
        if self.current is not None:
            return time.monotonic()
        self._generation += 1
        argv = [
            str(VENV_BIN / "celery"),
            "-A",
            "workers.celery_app",
            "worker",
            "-Q",
            "transfers",
            "--pool",
            "prefork",
            "--concurrency",
            str(posting_concurrency),
            "--loglevel",
            "INFO",
            # A name of our own: another worker on a shared broker must not clash with it.
            "-n",
            f"bench-transfers-{os.getpid()}-{self._generation}@{LOOPBACK}",
            "--without-mingle",
            "--without-gossip",
        ]
        process = Process("posting-workers", argv, self._env, self._log_dir)
        self.current = process
        process.wait_until(lambda: " ready." in process.log_text(), "worker ready")
        return time.monotonic()

    def stop(self) -> str | None:
        """Stop the workers; say so if they ignored SIGTERM and had to be killed."""
        if self.current is None:
            return None
        process, self.current = self.current, None
        if process.stop():
            return (
                f"posting workers (PID {process.pid}) were still running "
                f"{stop_timeout_seconds} s after SIGTERM, idle, and were killed"
            )
        return None


@contextlib.contextmanager
def servers(run_dir: Path) -> Iterator[tuple[str, str]]:
    """(server database URL, Redis URL): DATABASE_URL and REDIS_URL when both are set,
    else an embedded PostgreSQL and Valkey under run_dir, stopped by PID afterwards."""
    if os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"):
        yield os.environ["DATABASE_URL"], os.environ["REDIS_URL"]
        return
    data_dir = run_dir / "stack"
    # Durable, like production: commits wait for the WAL flush.
    stack = start_stack(data_dir, durable=True)
    print(f"  embedded PostgreSQL PID {stack.pg_pid}, Valkey PID {stack.redis_pid}")
    try:
        yield stack.database_url, stack.redis_url
    finally:
        stack.stop()
        # The data is large and useless now; the server logs stay with the others.
        for name in ("postgres", "valkey", "pgsock"):
            shutil.rmtree(data_dir / name, ignore_errors=True)


@contextlib.contextmanager
def bench_database(server_url: str) -> Iterator[str]:
    """A fresh database migrated to head with the real migrations; dropped afterwards."""
    name = f"ledger_bench_{secrets.token_hex(4)}"
    url = normalize_database_url(create_database(server_url, name))
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    command.upgrade(config, "head")
    try:
        yield url
    finally:
        with psycopg.connect(libpq_url(server_url), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def libpq_url(url: str) -> str:
    """The URL without SQLAlchemy's driver name, for psycopg and pgbench."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def admin_key(database_url: str, redis_url: str) -> str:
    engine = make_engine(Settings(database_url=database_url, redis_url=redis_url))
    try:
        return create_api_key(SqlUnitOfWorkFactory(engine), name="bench", scope=Scope.ADMIN)[1]
    finally:
        engine.dispose()
