"""Faults under load, all with real processes on a private PostgreSQL and Valkey: PostgreSQL
restarted answers 503 and recovers, Valkey restarted loses no accepted transfer, and posting
workers SIGKILLed 20 times still post each of 3,000 transfers exactly once."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, text

from devstack import create_database
from ledger_core.adapters.sql import SqlUnitOfWorkFactory
from ledger_core.config import normalize_database_url
from ledger_core.service_layer.access import Scope, create_api_key
from tests.conftest import TEST_SWEEPER_PENDING_AGE_MIN_SECONDS, statuses_of, wait_final
from tests.e2e.helpers import deposit, new_key, open_account, post_money
from tests.support.processes import (
    ManagedWorker,
    Process,
    run_ledger,
    start_api,
    start_beat,
    start_worker,
)
from tests.support.stack import RestartableStack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PROBLEM_JSON = "application/problem+json"

# Small posting transactions, so that a drain of a hundred transfers is a dozen commits a
# kill can land between.
posting_batch_size_max = 10
funding_amount = 1_000_000_000
# The bound on any one request: a request the API lets hang longer counts as a failure.
request_timeout_seconds = 15.0
response_seconds_max = 12.0
# Load: a few client threads, each retrying its own Idempotency-Key until it is accepted.
load_lanes = 4
load_ops_per_lane_max = 5_000
load_pause_seconds = 0.005
key_attempts_max = 1_000
key_retry_timeout_seconds = 45.0
key_retry_pause_seconds = 0.05
load_join_timeout_seconds = 60.0
accepted_before_fault_min = 20
warm_up_timeout_seconds = 20.0
pg_outage_seconds = 3.0
redis_outage_seconds = 2.5
recovery_timeout_seconds = 30.0
# How soon after PostgreSQL is back the API accepts again: its pool reconnects on the
# next request, well within this.
recovery_seconds_max = 10.0
after_recovery_seconds = 1.0
final_timeout_seconds = 60.0
reconcile_timeout_seconds = 60
# Kills: 3,000 transfers in batches, the worker's process group SIGKILLed 20 times.
kills_total = 20
transfers_total = 3_000
chunk_size = 100
kill_accounts = 10
kill_wait_timeout_seconds = 20.0
kill_poll_seconds = 0.005
kill_polls_max = int(kill_wait_timeout_seconds / kill_poll_seconds)
# Kills that found work still PENDING right after them, at the least: the rest may have
# caught the worker as it posted its last batch.
kills_mid_work_min = 3 * kills_total // 4


@dataclass
class Rig:
    """A private stack with the API, beat, the housekeeping and the posting workers on it."""

    stack: RestartableStack
    env: dict[str, str]
    engine: Engine
    api: Process
    api_url: str
    admin_key: str
    housekeeping: Process
    beat: Process
    worker: ManagedWorker

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {self.admin_key}"},
            timeout=request_timeout_seconds,
        )


@pytest.fixture(scope="module")
def rig(process_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    # Not under tmp_path, as in conftest: the unprivileged PostgreSQL user must reach it.
    data_dir = Path(tempfile.mkdtemp(prefix="ledger-faults-stack-"))
    stack = RestartableStack(data_dir)
    started: list[Any] = []
    try:
        url = normalize_database_url(create_database(stack.database_url, "ledger_faults"))
        config = Config(str(ROOT / "alembic.ini"))
        config.attributes["database_url"] = url
        command.upgrade(config, "head")
        # The test's own reads ping first: its pooled connections die with each restart.
        engine = create_engine(url, pool_pre_ping=True)
        started.append(engine)
        admin_key = create_api_key(SqlUnitOfWorkFactory(engine), name="faults", scope=Scope.ADMIN)[
            1
        ]
        env = {
            **process_env,
            "DATABASE_URL": url,
            "REDIS_URL": stack.redis_url,
            # Metrics and logs of their own: the session's processes must not count ours.
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("faults-metrics")),
            "POSTING_BATCH_SIZE_MAX": str(posting_batch_size_max),
        }
        log_dir = tmp_path_factory.mktemp("faults-logs")
        housekeeping = start_worker(
            env, log_dir, name="housekeeping", queue="housekeeping", concurrency=1
        )
        started.append(housekeeping)
        beat = start_beat(env, log_dir)
        started.append(beat)
        worker = ManagedWorker(env, log_dir, name="transfers", queue="transfers")
        started.append(worker)
        api, api_url = start_api(env, log_dir)
        started.append(api)
        yield Rig(stack, env, engine, api, api_url, admin_key, housekeeping, beat, worker)
    finally:
        # Last in, first out, and every one of them even if an earlier one raises.
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(shutil.rmtree, data_dir, ignore_errors=True)
            cleanup.callback(stack.stop)
            for thing in started:
                cleanup.callback(thing.dispose if isinstance(thing, Engine) else thing.stop)


# --------------------------------------------------------------------------- load


@dataclass
class Attempt:
    started: float  # time.monotonic()
    seconds: float
    status: int  # 0: no HTTP answer at all
    code: str | None = None
    content_type: str = ""
    retry_after: str | None = None
    error: str = ""


@dataclass
class Op:
    """One money movement, sent with one Idempotency-Key until the API accepts it."""

    path: str
    body: dict[str, Any]
    key: str = field(default_factory=new_key)
    attempts: list[Attempt] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)

    @property
    def transfer_id(self) -> str | None:
        return next(iter(self.ids)) if len(self.ids) == 1 else None


class Load:
    """Client threads posting deposits and transfers, each between its own two accounts,
    retrying a 503 (or a key still in use) with the same key, as a client should."""

    def __init__(self, rig: Rig, lanes: list[tuple[str, str]]) -> None:
        self._rig = rig
        self._lanes = lanes
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.ops: list[Op] = []
        self._threads = [
            threading.Thread(target=self._run, args=(lane,), name=f"load-{lane}", daemon=True)
            for lane in range(len(lanes))
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """No new keys; the keys in flight are retried until accepted (bounded)."""
        self._stop.set()
        deadline = time.monotonic() + load_join_timeout_seconds
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(thread.is_alive() for thread in self._threads), "load did not stop"

    def attempts(self) -> list[Attempt]:
        with self._lock:
            return [attempt for op in self.ops for attempt in op.attempts]

    def wait_accepted(self, *, after: float, count_min: int, timeout_seconds: float) -> float:
        """Wait until `count_min` requests sent after `after` were accepted; when the last was."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            accepted = sorted(
                a.started + a.seconds
                for a in self.attempts()
                if a.started >= after and a.status == 202
            )
            if len(accepted) >= count_min:
                return accepted[count_min - 1]
            time.sleep(0.05)
        raise AssertionError(f"fewer than {count_min} requests accepted in {timeout_seconds} s")

    def _plan(self, lane: int, number: int) -> Op:
        source, destination = self._lanes[lane]
        if number % 2 == 0:
            return Op("/v1/deposits", {"account_id": destination, "amount": 1 + number % 7})
        body = {
            "source_account_id": source,
            "destination_account_id": destination,
            "amount": 1 + number % 5,
        }
        return Op("/v1/transfers", body)

    def _run(self, lane: int) -> None:
        with self._rig.client() as http:
            for number in range(load_ops_per_lane_max):
                if self._stop.is_set():
                    return
                op = self._plan(lane, number)
                with self._lock:
                    self.ops.append(op)
                self._complete(http, op)
                time.sleep(load_pause_seconds)

    def _complete(self, http: httpx.Client, op: Op) -> None:
        deadline = time.monotonic() + key_retry_timeout_seconds
        for _ in range(key_attempts_max):
            if time.monotonic() > deadline:
                return
            started = time.monotonic()
            try:
                response = http.post(op.path, json=op.body, headers={"Idempotency-Key": op.key})
            except httpx.HTTPError as error:
                attempt = Attempt(started, time.monotonic() - started, 0, error=repr(error))
            else:
                content_type = response.headers.get("content-type", "")
                is_json = content_type.startswith(("application/json", PROBLEM_JSON))
                body = response.json() if is_json else {}
                attempt = Attempt(
                    started,
                    time.monotonic() - started,
                    response.status_code,
                    body.get("code"),
                    content_type,
                    response.headers.get("Retry-After"),
                )
                if response.status_code == 202:
                    with self._lock:
                        op.attempts.append(attempt)
                        op.ids.add(body["id"])
                    return
            with self._lock:
                op.attempts.append(attempt)
            in_use = attempt.status == 409 and attempt.code == "idempotency_key_in_use"
            if attempt.status not in (0, 503) and not in_use:
                return  # not a retryable answer: the assertions report it
            time.sleep(key_retry_pause_seconds)


# --------------------------------------------------------------------------- checks


def lanes_of(client: httpx.Client, engine: Engine, count: int) -> list[tuple[str, str]]:
    """`count` (funded source, empty destination) pairs of accounts."""
    pairs = [(open_account(client)["id"], open_account(client)["id"]) for _ in range(count)]
    wait_final(engine, [deposit(client, source, funding_amount)["id"] for source, _ in pairs])
    return pairs


def assert_posted_exactly_once(engine: Engine, amounts: dict[str, int]) -> None:
    """Each transfer is posted with exactly its two entries: -amount and +amount."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT t.id, t.status, t.amount, count(e.id) AS entries,"
                " coalesce(min(e.amount), 0) AS low, coalesce(max(e.amount), 0) AS high"
                " FROM transfers t LEFT JOIN entries e ON e.transfer_id = t.id"
                " WHERE t.id = ANY(:ids) GROUP BY t.id"
            ),
            {"ids": list(amounts)},
        ).all()
    assert len(rows) == len(amounts)
    wrong = {
        row.id: (row.status, row.entries, row.low, row.high)
        for row in rows
        if (row.status, row.entries, row.low, row.high, row.amount)
        != ("posted", 2, -amounts[row.id], amounts[row.id], amounts[row.id])
    }
    assert wrong == {}


def assert_only_these_transfers(engine: Engine, accounts: list[str], ids: set[str]) -> None:
    """No transfer touches these accounts but the accepted ones: a retry created none."""
    with engine.connect() as connection:
        found = set(
            connection.scalars(
                text(
                    "SELECT id FROM transfers WHERE source_account_id = ANY(:accounts)"
                    " OR destination_account_id = ANY(:accounts)"
                ),
                {"accounts": accounts},
            )
        )
    assert found - ids == set(), "transfers nobody was told were accepted"
    assert ids - found == set(), "accepted transfers that do not exist"


def assert_balances(engine: Engine, expected: dict[str, int]) -> None:
    """Each balance is the sum of its entries, and what the accepted movements make it."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT a.id, a.balance, coalesce(sum(e.amount), 0) AS entries"
                " FROM accounts a LEFT JOIN entries e ON e.account_id = a.id"
                " WHERE a.id = ANY(:ids) GROUP BY a.id"
            ),
            {"ids": list(expected)},
        )
        found = {row.id: (int(row.balance), int(row.entries)) for row in rows}
    assert found == {account: (amount, amount) for account, amount in expected.items()}


def assert_reconcile_clean(rig: Rig) -> None:
    result = run_ledger(
        "reconcile",
        "--pending-age-max-seconds",
        "60",
        env=rig.env,
        timeout_seconds=reconcile_timeout_seconds,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout


Move = tuple[str | None, str, int]  # (source or None for a deposit, destination, amount)


def check_books(
    rig: Rig,
    amounts: dict[str, int],
    pairs: list[tuple[str, str]],
    funded: set[str],
    moves: Iterable[Move],
) -> None:
    """Each transfer posted once, nothing else on these accounts but their funding, the
    balances the moves make from funded sources and empty destinations, reconcile clean."""
    wait_final(rig.engine, list(amounts), final_timeout_seconds)
    assert_posted_exactly_once(rig.engine, amounts)
    accounts = [account for pair in pairs for account in pair]
    assert_only_these_transfers(rig.engine, accounts, set(amounts) | funded)
    expected = {source: funding_amount for source, _ in pairs} | {d: 0 for _, d in pairs}
    for source, destination, amount in moves:
        if source is not None:
            expected[source] -= amount
        expected[destination] += amount
    assert_balances(rig.engine, expected)
    assert_reconcile_clean(rig)


def check_load_books(rig: Rig, load: Load, lanes: list[tuple[str, str]], funded: set[str]) -> None:
    """Every op accepted under one id, posted once, and the balances they make."""
    assert [op.key for op in load.ops if op.transfer_id is None] == []
    amounts = {op.transfer_id: op.body["amount"] for op in load.ops if op.transfer_id}
    assert len(amounts) == len(load.ops)
    moves: list[Move] = [
        (
            op.body.get("source_account_id"),
            op.body.get("account_id") or op.body["destination_account_id"],
            op.body["amount"],
        )
        for op in load.ops
    ]
    check_books(rig, amounts, lanes, funded, moves)


def funding_ids(engine: Engine, lanes: list[tuple[str, str]]) -> set[str]:
    with engine.connect() as connection:
        return set(
            connection.scalars(
                text(
                    "SELECT id FROM transfers WHERE kind = 'deposit' AND destination_account_id"
                    " = ANY(:ids) AND amount = :amount"
                ),
                {"ids": [source for source, _ in lanes], "amount": funding_amount},
            )
        )


def family_pids(process: Process) -> set[int]:
    return {process.pid} | {child.pid for child in process.children()}


# --------------------------------------------------------------------------- tests


def test_postgresql_restarted_under_load_answers_503_then_recovers_and_posts_once(
    rig: Rig,
) -> None:
    with rig.client() as client:
        lanes = lanes_of(client, rig.engine, load_lanes)
    funded = funding_ids(rig.engine, lanes)
    api_pids = family_pids(rig.api)
    try:
        with Load(rig, lanes) as load:
            load.wait_accepted(
                after=0,
                count_min=accepted_before_fault_min,
                timeout_seconds=warm_up_timeout_seconds,
            )
            rig.stack.stop_postgres()
            down = time.monotonic()
            time.sleep(pg_outage_seconds)
            back = time.monotonic()
            rig.stack.start_postgres()
            up = time.monotonic()
            recovered = load.wait_accepted(
                after=up, count_min=1, timeout_seconds=recovery_timeout_seconds
            )
            time.sleep(after_recovery_seconds)
    finally:
        if not rig.stack.pg_running:
            rig.stack.start_postgres()

    attempts = load.attempts()
    # Sent and answered while the server was gone: each one a 503 problem with its code.
    outage = [a for a in attempts if a.started >= down and a.started + a.seconds <= back]
    assert len(outage) >= load_lanes
    assert {(a.status, a.code, a.content_type) for a in outage} == {
        (503, "database_unavailable", PROBLEM_JSON)
    }
    assert {a.retry_after for a in outage} == {"1"}
    # Before, during and after: accepted, unavailable or (a retry racing itself) in use.
    assert {(a.status, a.code) for a in attempts} <= {
        (202, None),
        (503, "database_unavailable"),
        (409, "idempotency_key_in_use"),
    }, [a for a in attempts if a.status not in (202, 503, 409)][:5]
    assert max(a.seconds for a in attempts) < response_seconds_max
    assert recovered - up < recovery_seconds_max
    # Recovered by reconnecting, not by restarting: the same API processes answer.
    assert family_pids(rig.api) == api_pids
    assert rig.worker.current.popen.poll() is None
    check_load_books(rig, load, lanes, funded)


def housekeeping_log_since(rig: Rig, offset: int) -> str:
    return rig.housekeeping.log_path.read_bytes()[offset:].decode(errors="replace")


def pids_of_processes(rig: Rig) -> dict[str, set[int]]:
    """Each long-running process's PID with its children's, by name."""
    return {
        "worker": family_pids(rig.worker.current),
        "housekeeping": family_pids(rig.housekeeping),
        "beat": family_pids(rig.beat),
        "api": family_pids(rig.api),
    }


def test_valkey_restarted_with_append_only_file_loses_no_accepted_transfer(rig: Rig) -> None:
    with redis.Redis.from_url(rig.stack.redis_url) as valkey:
        assert valkey.config_get("appendonly") == {"appendonly": "yes"}
        marker = secrets.token_hex(8)
        valkey.set("faults:marker", marker)
    with rig.client() as client:
        lanes = lanes_of(client, rig.engine, load_lanes)
    funded = funding_ids(rig.engine, lanes)
    processes = pids_of_processes(rig)
    log_offset = rig.housekeeping.log_path.stat().st_size
    try:
        with Load(rig, lanes) as load:
            load.wait_accepted(
                after=0,
                count_min=accepted_before_fault_min,
                timeout_seconds=warm_up_timeout_seconds,
            )
            # A crash, not a shutdown: the append-only file has what Valkey acknowledged.
            rig.stack.stop_valkey(signal.SIGKILL)
            down = time.monotonic()
            load.wait_accepted(
                after=down, count_min=load_lanes, timeout_seconds=redis_outage_seconds * 4
            )
            time.sleep(redis_outage_seconds)
        # No new transfer from here on, so no wake-up from the API: what is still pending
        # now lost its enqueue, and only the sweeper can have it posted.
        accepted = [op.transfer_id for op in load.ops if op.transfer_id]
        stranded = [i for i, s in statuses_of(rig.engine, accepted).items() if s == "pending"]
        rig.stack.start_valkey()
        up = time.monotonic()
    finally:
        if not rig.stack.redis_running:
            rig.stack.start_valkey()

    attempts = load.attempts()
    during = [a for a in attempts if a.started >= down]
    assert len(during) >= load_lanes
    # Redis is not needed to accept: everything sent while it was down was accepted.
    assert {a.status for a in during} == {202}
    assert {(a.status, a.code) for a in attempts} <= {(202, None), (409, "idempotency_key_in_use")}
    assert max(a.seconds for a in attempts) < response_seconds_max
    assert stranded, "every transfer posted during the outage: nothing left to recover"
    wait_final(rig.engine, stranded, recovery_timeout_seconds)
    recovered = time.monotonic() - up
    assert "sweeper woke posting" in housekeeping_log_since(rig, log_offset)
    # The same processes reconnected: none was restarted.
    assert pids_of_processes(rig) == processes
    with redis.Redis.from_url(rig.stack.redis_url) as valkey:
        assert valkey.get("faults:marker") == marker.encode()
    check_load_books(rig, load, lanes, funded)

    # And the wake-up path works again: a new deposit posts before any sweep could see it.
    with rig.client() as client:
        fresh = deposit(client, lanes[0][1], 1)["id"]
    assert wait_final(rig.engine, [fresh], TEST_SWEEPER_PENDING_AGE_MIN_SECONDS) == {
        fresh: "posted"
    }
    print(f"recovered {len(stranded)} stranded transfers in {recovered:.1f} s")


@dataclass
class Kill:
    pid: int
    posted: int
    pending: int
    returncode: int | None = None


def test_posting_workers_sigkilled_20_times_post_3000_transfers_exactly_once(rig: Rig) -> None:
    with rig.client() as client:
        pairs = lanes_of(client, rig.engine, kill_accounts)
        sources = [source for source, _ in pairs]
        funded = funding_ids(rig.engine, pairs)
        plan: list[dict[str, Any]] = [
            {
                "kind": "transfer",
                "source_account_id": pairs[n % kill_accounts][0],
                "destination_account_id": pairs[(n // kill_accounts) % kill_accounts][1],
                "amount": 1 + n % 9,
            }
            for n in range(transfers_total)
        ]
        chunks = [plan[i : i + chunk_size] for i in range(0, transfers_total, chunk_size)]
        amounts: dict[str, int] = {}

        def submit() -> None:
            items = chunks.pop(0)
            response = post_money(client, "/v1/transfers/batch", {"items": items})
            assert response.status_code == 202, response.text
            ids = [item["id"] for item in response.json()["items"]]
            amounts.update(zip(ids, (item["amount"] for item in items), strict=True))

        def counts() -> tuple[int, int]:
            with rig.engine.connect() as connection:
                row = connection.execute(
                    text(
                        "SELECT count(*) FILTER (WHERE status = 'posted') AS posted,"
                        " count(*) FILTER (WHERE status = 'pending') AS pending"
                        " FROM transfers WHERE kind = 'transfer'"
                        " AND source_account_id = ANY(:sources)"
                    ),
                    {"sources": sources},
                ).one()
            return row.posted, row.pending

        kills: list[Kill] = []
        started = time.monotonic()
        for _ in range(kills_total):
            worker = rig.worker.current
            posted_before, _ = counts()
            submit()
            # Kill once this worker has posted some, with some still to post.
            deadline = time.monotonic() + kill_wait_timeout_seconds
            for _ in range(kill_polls_max):
                assert time.monotonic() < deadline, f"no kill {len(kills) + 1} in time"
                posted, pending = counts()
                if pending == 0:
                    assert chunks, f"all {transfers_total} posted after {len(kills)} kills"
                    submit()
                    continue
                if posted > posted_before:
                    break
                time.sleep(kill_poll_seconds)
            else:
                raise AssertionError(f"no kill {len(kills) + 1} in {kill_polls_max} polls")
            assert worker.popen.poll() is None, "the worker died before its kill"
            assert worker.children(), "the worker has no pool processes"
            os.killpg(worker.pid, signal.SIGKILL)
            # Measured after the kill, not before: what the dead worker left to the next.
            posted, pending = counts()
            kills.append(Kill(worker.pid, posted, pending))
            kills[-1].returncode = rig.worker.restart(signal.SIGKILL)
        killing_seconds = time.monotonic() - started
        while chunks:
            submit()

    assert len(kills) == kills_total
    assert {kill.returncode for kill in kills} == {-signal.SIGKILL}
    assert len({kill.pid for kill in kills}) == kills_total
    assert all(kill.posted > 0 for kill in kills)
    assert sum(kill.pending > 0 for kill in kills) >= kills_mid_work_min, kills
    assert len(amounts) == transfers_total
    statuses = wait_final(rig.engine, list(amounts), final_timeout_seconds)
    assert set(statuses.values()) == {"posted"}
    assert_posted_exactly_once(rig.engine, amounts)
    with rig.engine.connect() as connection:
        entries = connection.scalar(
            text("SELECT count(*) FROM entries WHERE transfer_id = ANY(:ids)"),
            {"ids": list(amounts)},
        )
    assert entries == 2 * transfers_total
    moves = [(i["source_account_id"], i["destination_account_id"], i["amount"]) for i in plan]
    check_books(rig, amounts, pairs, funded, moves)
    print(
        f"{kills_total} kills in {killing_seconds:.1f} s; pending at each kill:"
        f" {[kill.pending for kill in kills]}"
    )
