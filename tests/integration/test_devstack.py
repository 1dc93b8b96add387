"""The embedded stack serves PostgreSQL and Valkey, is reused per data dir, and stops cleanly."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from devstack import Stack, StackError, create_database, start_stack


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh stack data dir outside pytest's basetemp.

    As root, PostgreSQL runs as another account that needs o+x on every ancestor, and
    any concurrent pytest session run by root resets /tmp/pytest-of-root to 0700.
    """
    path = Path(tempfile.mkdtemp(prefix="devstack-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _libpq_url(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


def _is_gone(pid: int) -> bool:
    # A zombie has exited; it only waits for its parent (init, for the daemonised
    # postmaster) to reap it, which some container inits never do.
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _assert_serves(stack: Stack) -> None:
    with psycopg.connect(_libpq_url(stack.database_url), connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with redis.Redis.from_url(stack.redis_url, socket_timeout=5) as client:
        assert client.ping() is True


def test_stack_serves_reuses_creates_databases_and_stops(data_dir: Path) -> None:
    stack = start_stack(data_dir / "stack", durable=False)
    pg_children: list[int] = []
    try:
        assert stack.database_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
        assert stack.redis_url.startswith("redis://127.0.0.1:")
        _assert_serves(stack)

        with psycopg.connect(_libpq_url(stack.database_url)) as conn:
            settings = dict(
                conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name IN"
                    " ('fsync', 'max_connections', 'client_connection_check_interval',"
                    "  'listen_addresses')"
                ).fetchall()
            )
        assert settings == {
            "fsync": "off",
            "max_connections": "300",
            "client_connection_check_interval": "1000",
            "listen_addresses": "127.0.0.1",
        }

        again = start_stack(data_dir / "stack")
        assert (again.pg_pid, again.redis_pid) == (stack.pg_pid, stack.redis_pid)
        assert (again.database_url, again.redis_url) == (stack.database_url, stack.redis_url)

        fresh_url = create_database(stack.database_url, "fresh_db")
        assert fresh_url.startswith("postgresql+psycopg://") and fresh_url.endswith("/fresh_db")
        with psycopg.connect(_libpq_url(fresh_url)) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("fresh_db",)
        pg_children = [child.pid for child in psutil.Process(stack.pg_pid).children()]
    finally:
        stack.stop()

    assert pg_children  # checkpointer, walwriter, ...: they must go too
    assert all(_is_gone(pid) for pid in [stack.pg_pid, stack.redis_pid, *pg_children])
    assert not (data_dir / "stack" / "valkey.pid").exists()
    assert not (data_dir / "stack" / "postgres" / "postmaster.pid").exists()


def test_long_data_dir_puts_the_socket_under_tmp_and_removes_it(data_dir: Path) -> None:
    long_dir = data_dir / ("d" * 60) / ("e" * 60)
    stack = start_stack(long_dir, durable=False)
    try:
        _assert_serves(stack)
        socket_dir = Path((long_dir / "postgres" / "postmaster.pid").read_text().splitlines()[4])
        assert socket_dir.parent == Path("/tmp")
        assert len(str(socket_dir / f".s.PGSQL.{stack.pg_port}")) < 100
    finally:
        stack.stop()
    assert not socket_dir.exists()
    assert _is_gone(stack.pg_pid)
    assert _is_gone(stack.redis_pid)


def test_a_taken_port_fails_loudly_without_starting_anything(data_dir: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken_port = squatter.getsockname()[1]
        with pytest.raises(StackError, match=f"port {taken_port}"):
            start_stack(data_dir / "stack", pg_port=taken_port, durable=False)
    assert not (data_dir / "stack" / "postgres").exists()
