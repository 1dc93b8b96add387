"""One posting worker at a time per shard, by a PostgreSQL advisory lock.

Measured on 2 cores with uniform traffic over 1,000 accounts, two workers draining one
shard posted fewer transfers per second than one: every batch of 1,000 touches most
accounts, so the second worker spends its batch waiting on the first one's row locks,
and the two only compete for the CPU. The holder drains the whole backlog; another
worker woken meanwhile waits here, and takes over when the holder lets go. Shards
(POSTING_SHARDS) are what runs in parallel.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from ledger_core.adapters.sql_connection import is_transient
from ledger_core.service_layer.errors import StorageUnavailableError

# Any number, the same in every deployment: the first half of the two-part lock key.
POSTING_LOCK_CLASS = 731_800_442
# Waiting for the shard's holder, who lets go within posting_drain_seconds_max; short, so
# that a warm shutdown (which waits for running tasks) stays well under its grace period.
shard_wait_seconds_max = 15


@contextmanager
def exclusive_shard(
    engine: Engine, shard: int, *, wait_seconds: float = shard_wait_seconds_max
) -> Iterator[bool]:
    """Hold the shard's lock for the block (True), or give up after `wait_seconds` (False).

    A session lock on a connection of its own in autocommit, so that waiting holds no
    transaction open; it is released at the end of the block, or by PostgreSQL when the
    process dies and its connection closes."""
    try:
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except Exception as error:
        if is_transient(error):
            raise StorageUnavailableError(str(error)) from error
        raise
    try:
        connection.exec_driver_sql(f"SET lock_timeout = {int(wait_seconds * 1000)}")
        try:
            connection.exec_driver_sql(
                "SELECT pg_advisory_lock(%(class)s, %(shard)s)",
                {"class": POSTING_LOCK_CLASS, "shard": shard},
            )
        except OperationalError as error:
            if "lock timeout" not in str(error):
                raise StorageUnavailableError(str(error)) from error
            yield False
            return
        try:
            yield True
        finally:
            connection.exec_driver_sql(
                "SELECT pg_advisory_unlock(%(class)s, %(shard)s)",
                {"class": POSTING_LOCK_CLASS, "shard": shard},
            )
    finally:
        connection.close()
