"""The posting's own writes done by PostgreSQL alone: the ceiling of posting on this schema.

The raw-SQL cases of rawsql.py write double entries on bare tables. This case does, on
the ledger's real tables with their indexes, constraints and triggers, everything one
posting transaction writes for 1,000 PENDING transfers: claim them (FOR NO KEY UPDATE
SKIP LOCKED, oldest first), lock their accounts in ascending id order, insert the
entries with their running balances, update the balances and the statuses, and write
one event per transfer with its payload. One statement, no Python, no round trips: the
gap between this and the drain rate is what the posting worker itself costs.

One pgbench client, as one worker drains a shard at a time; a fixed number of
transactions over a backlog built for them (a time limit would let the last ones find
the backlog empty and count as fast).
"""

from __future__ import annotations

import random
import re
import subprocess
from pathlib import Path

import psycopg

from bench.rawsql import exit_margin_seconds, pgbench_path

BATCH = 1000
TPS_PATTERN = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)

BACKLOG = """
INSERT INTO transfers (id, kind, source_account_id, destination_account_id, amount, currency,
                       api_key_id, shard)
SELECT 'tr_ceiling_' || %(run)s || '_' || n, 'transfer', src, dst, 1, 'USD',
       (SELECT id FROM api_keys ORDER BY created_at LIMIT 1), 0
FROM unnest(%(sources)b::text[], %(destinations)b::text[]) WITH ORDINALITY AS u(src, dst, n)
ORDER BY n
"""

POST_ONE_BATCH = f"""
WITH claim AS (
    SELECT id, seq, source_account_id AS src, destination_account_id AS dst, amount
    FROM transfers
    WHERE status = 'pending' AND (group_id IS NULL OR group_id = id) AND shard = 0
      AND (posting_retry_at IS NULL OR posting_retry_at <= now())
    ORDER BY seq LIMIT {BATCH}
    FOR NO KEY UPDATE SKIP LOCKED
), locked AS (
    SELECT a.id, a.balance FROM accounts a
    WHERE a.id IN (SELECT src FROM claim UNION SELECT dst FROM claim)
    ORDER BY a.id FOR NO KEY UPDATE
), legs AS (
    -- `leg` orders the credit first, as posting does; the entry stores its position (source 0)
    SELECT seq, 1 AS leg, id AS transfer_id, src AS account_id, -amount AS amount FROM claim
    UNION ALL
    SELECT seq, 0, id, dst, amount FROM claim
), running AS (
    SELECT l.*, k.balance + sum(l.amount) OVER (
               PARTITION BY l.account_id ORDER BY l.seq, l.leg) AS balance_after
    FROM legs l JOIN locked k ON k.id = l.account_id
), entries_written AS (
    INSERT INTO entries (transfer_id, account_id, amount, balance_after, leg)
    SELECT transfer_id, account_id, amount, balance_after, (1 - leg)::smallint
    FROM running ORDER BY seq, leg
), balances AS (
    UPDATE accounts a SET balance = last.balance_after
    FROM (SELECT DISTINCT ON (account_id) account_id, balance_after FROM running
          ORDER BY account_id, seq DESC, leg DESC) last
    WHERE a.id = last.account_id
), final AS (
    UPDATE transfers t SET status = 'posted', posted_at = now(),
           finalized_at = clock_timestamp()
    FROM claim c WHERE t.id = c.id
    RETURNING t.*
), events_written AS (
    INSERT INTO events (id, type, transfer_id, payload, created_at)
    SELECT 'evt_' || f.id, 'transfer.posted', f.id,
           json_build_object('id', 'evt_' || f.id, 'type', 'transfer.posted',
                             'data', row_to_json(f))::text,
           now()
    FROM final f
)
SELECT count(*) FROM final;
"""


def _pairs(accounts: list[str], count: int, *, hot: bool) -> tuple[list[str], list[str]]:
    """Deterministic source and destination of each transfer, never the same account."""
    rng = random.Random(count)
    if hot:
        return [rng.choice(accounts[1:]) for _ in range(count)], [accounts[0]] * count
    pairs = [rng.sample(accounts, 2) for _ in range(count)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def run(
    *,
    libpq_url: str,
    accounts: list[str],
    transactions: int,
    hot: bool,
    work_dir: Path,
    log_dir: Path,
    seconds_max: float,
) -> float:
    """Build a backlog of transactions x 1,000 transfers, post it with pgbench; return
    transfers per second."""
    label = "hot" if hot else "uniform"
    sources, destinations = _pairs(accounts, transactions * BATCH, hot=hot)
    with psycopg.connect(libpq_url, autocommit=True) as connection:
        # Whatever an earlier stage left PENDING is claimed first: same shape of work.
        connection.execute(
            BACKLOG, {"run": label, "sources": sources, "destinations": destinations}
        )
        connection.execute("VACUUM ANALYZE transfers, accounts")
    script_path = work_dir / f"pgbench-ledger-{label}.sql"
    script_path.write_text(POST_ONE_BATCH)
    argv = [
        pgbench_path(),
        "--no-vacuum",
        "--file",
        str(script_path),
        "--client",
        "1",
        "--transactions",
        str(transactions),
        libpq_url,
    ]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=seconds_max + exit_margin_seconds,
        check=False,
    )
    (log_dir / f"pgbench-ledger-{label}.log").write_text(done.stdout + done.stderr)
    found = TPS_PATTERN.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"pgbench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return float(found.group(1)) * BATCH
