"""What the benchmark reads back from the ledger's tables: how much is PENDING, and when
transfers were accepted and finalised (the database's clock, so one clock for both)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg


@dataclass(frozen=True)
class Span:
    """Posted transfers, from the start of the first posting transaction to the end of
    the last: the drain's own duration, without the workers' start-up."""

    posted: int
    others: int  # rejected, quarantined or still pending: none expected
    seconds: float

    @property
    def per_second(self) -> float:
        return self.posted / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Latency:
    transfers: int
    p50_ms: float
    p99_ms: float
    max_ms: float


class Books:
    """One autocommit connection to the bench database, for short reads between and
    after the loads (never inside a measured transaction of the ledger)."""

    def __init__(self, libpq_url: str) -> None:
        self._connection = psycopg.connect(libpq_url, autocommit=True)

    def close(self) -> None:
        self._connection.close()

    def _one(self, sql: str, params: tuple = ()) -> tuple:
        row = self._connection.execute(sql, params).fetchone()
        assert row is not None
        return row

    def pending(self) -> int:
        # ix_transfers_pending_created_at covers exactly these rows: an index-only count.
        return int(self._one("SELECT count(*) FROM transfers WHERE status = 'pending'")[0])

    def seq_mark(self) -> int:
        """The last acceptance number so far: later transfers have a greater one."""
        return int(self._one("SELECT coalesce(max(seq), 0) FROM transfers")[0])

    def clock(self) -> datetime:
        return self._one("SELECT clock_timestamp()")[0]

    def drain_span(self, after_seq: int) -> Span:
        posted, others, seconds = self._one(
            """
            SELECT count(*) FILTER (WHERE status = 'posted'),
                   count(*) FILTER (WHERE status <> 'posted'),
                   coalesce(extract(epoch FROM max(finalized_at) FILTER (WHERE status = 'posted')
                                    - min(posted_at)), 0)
            FROM transfers WHERE seq > %s
            """,
            (after_seq,),
        )
        return Span(int(posted), int(others), float(seconds))

    def first_accepted(self, after_seq: int) -> datetime | None:
        return self._one("SELECT min(created_at) FROM transfers WHERE seq > %s", (after_seq,))[0]

    def finalized_between(self, after_seq: int, start: datetime, end: datetime) -> int:
        return int(
            self._one(
                "SELECT count(*) FROM transfers"
                " WHERE seq > %s AND finalized_at >= %s AND finalized_at < %s",
                (after_seq, start, end),
            )[0]
        )

    def accepted_between(self, after_seq: int, start: datetime, end: datetime) -> int:
        return int(
            self._one(
                "SELECT count(*) FROM transfers"
                " WHERE seq > %s AND created_at >= %s AND created_at < %s",
                (after_seq, start, end),
            )[0]
        )

    def latency(self, after_seq: int, upto_seq: int) -> Latency:
        """Accepted (the accepting transaction's start) to finalised (the clock when the
        posting transaction wrote the status), in milliseconds."""
        count, p50, p99, highest = self._one(
            """
            WITH l AS (
                SELECT extract(epoch FROM finalized_at - created_at) * 1000 AS ms
                FROM transfers
                WHERE seq > %s AND seq <= %s AND finalized_at IS NOT NULL
            )
            SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms)
            FROM l
            """,
            (after_seq, upto_seq),
        )
        return Latency(int(count), float(p50 or 0), float(p99 or 0), float(highest or 0))

    def statuses(self, after_seq: int) -> dict[str, int]:
        rows = self._connection.execute(
            "SELECT status, count(*) FROM transfers WHERE seq > %s GROUP BY status", (after_seq,)
        ).fetchall()
        return {status: int(count) for status, count in rows}

    def server_version(self) -> str:
        return str(self._one("SHOW server_version")[0])
