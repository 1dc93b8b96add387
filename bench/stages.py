"""The stages of a run. Each prints its figures as soon as they are measured and leaves the
ledger as the next stage expects it: nothing PENDING once it has drained what it made.

Accept stages run with the posting workers stopped, so that the figure is the API's
alone (posting would share the two cores); the end-to-end and latency stages run with
them. Every wait is bounded in time; every loop in count.
"""

from __future__ import annotations

import argparse
import math
import random
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx

from bench import ledgersql, rawsql
from bench.books import Books
from bench.load import LoadClient, Plan, transfer_item
from bench.pyclient import PythonClient
from bench.report import Figure, Target
from bench.stack import PostingWorkers, start_web
from workers.celery_app import POST_PENDING_TASK, make_celery

setup_threads = 8
setup_request_timeout_seconds = 60
funding_amount = 1_000_000
drain_poll_seconds = 0.1
# Posting that makes no progress this long while PENDING transfers wait has lost its
# wake-up (the bench runs no beat, hence no sweeper): it is woken by hand, and reported.
stall_seconds = 5.0
stall_wakes_max = 10
# After a load, what is left PENDING must drain within this (more for a deep backlog).
settle_timeout_seconds = 300

TARGET_BATCH = Target(True, 10_000, ">= 10,000/s")
TARGET_E2E_BATCH = Target(True, 2_000, ">= 2,000/s")
TARGET_E2E_SINGLE = Target(True, 500, ">= 500/s")
TARGET_LATENCY = Target(False, 100, "p99 <= 100 ms")


@dataclass
class Bench:
    """What every stage needs: the running system, the client, the figures so far."""

    options: argparse.Namespace
    client: LoadClient
    api_url: str
    api_key: str
    accounts: tuple[str, ...]
    books: Books
    posting: PostingWorkers
    env: dict[str, str]
    log_dir: Path
    work_dir: Path
    libpq_url: str
    redis_url: str
    figures: dict[str, Figure] = field(default_factory=dict)
    # Things that looked wrong in the system under test, for the report.
    anomalies: list[str] = field(default_factory=list)
    _loads: int = 0

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def merchant(self) -> str:
        """The hot account: every transfer of a hot-account load credits it."""
        return self.accounts[0]

    def plan(self, kind: str, *, hot: bool = False) -> Plan:
        self._loads += 1
        return Plan(
            kind=kind,
            path={"transfer": "/v1/transfers", "batch": "/v1/transfers/batch"}[kind],
            headers=self.headers,
            account_ids=self.accounts,
            hot_account_id=self.merchant if hot else None,
            items_per_request=int(self.options.batch_items) if kind == "batch" else 1,
            key_prefix=f"bench-{secrets.token_hex(4)}-{self._loads}-",
        )

    def record(self, figure: Figure) -> None:
        self.figures[figure.key] = figure
        shown = figure.cells()
        latency = f"  p50 {shown[2]} ms  p99 {shown[3]} ms" if figure.p50_ms is not None else ""
        target = f"  target {shown[4]}: {shown[5]}" if figure.target else ""
        note = f"  ({figure.note})" if figure.note else ""
        print(f"  => {figure.label}: {shown[1]}{latency}{target}{note}", flush=True)

    def anomaly(self, text: str) -> None:
        self.anomalies.append(text)
        print(f"  !! {text}", flush=True)


# --------------------------------------------------------------------------- helpers


def wake_posting(redis_url: str) -> None:
    """Publish one wake-up, as the API and the sweeper do."""
    celery = make_celery(redis_url)
    try:
        celery.send_task(POST_PENDING_TASK, args=[0], queue="transfers")
    finally:
        celery.close()


def wait_drained(bench: Bench, timeout_seconds: float = settle_timeout_seconds) -> None:
    """Poll until nothing is PENDING (the workers must be running), bounded."""
    deadline = time.monotonic() + timeout_seconds
    last, since, wakes = -1, time.monotonic(), 0
    polls_max = math.ceil(timeout_seconds / drain_poll_seconds) + 1
    for _ in range(polls_max):
        pending = bench.books.pending()
        now = time.monotonic()
        if pending == 0:
            return
        if now >= deadline:
            break
        if pending != last:
            last, since = pending, now
        elif now - since >= stall_seconds and wakes < stall_wakes_max:
            bench.anomaly(
                f"posting stalled with {pending:,} PENDING for {stall_seconds:.0f} s; woken"
            )
            wake_posting(bench.redis_url)
            wakes, since = wakes + 1, now
        time.sleep(drain_poll_seconds)
    raise RuntimeError(
        f"{bench.books.pending():,} transfers still PENDING after {timeout_seconds:.0f} s"
    )


def settle(bench: Bench, *, posting: bool) -> None:
    """Drain what earlier stages left PENDING, then leave the workers running or not."""
    if bench.books.pending():
        bench.posting.start()
        wait_drained(bench)
    if posting:
        bench.posting.start()
    else:
        trouble = bench.posting.stop()
        if trouble:
            bench.anomaly(trouble)


def _post(http: httpx.Client, path: str, body: object, key: str | None = None) -> dict:
    headers = {"Idempotency-Key": key} if key else {}
    response = http.post(path, json=body, headers=headers)
    if response.status_code not in (201, 202):
        raise RuntimeError(f"POST {path}: {response.status_code} {response.text[:500]}")
    return response.json()  # type: ignore[no-any-return]


def _setup_client(api_url: str, api_key: str) -> httpx.Client:
    limits = httpx.Limits(max_connections=setup_threads, max_keepalive_connections=setup_threads)
    return httpx.Client(
        base_url=api_url,
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=setup_request_timeout_seconds,
        limits=limits,
    )


def open_accounts(api_url: str, api_key: str, count: int) -> tuple[str, ...]:
    """`count` USD accounts that may go negative (so every transfer posts), each funded
    by a deposit; the deposits are posted by the workers, which must be running."""
    token = secrets.token_hex(4)
    with _setup_client(api_url, api_key) as http, ThreadPoolExecutor(setup_threads) as pool:
        body = {"currency": "USD", "allow_overdraft": True}
        ids = tuple(pool.map(lambda _: _post(http, "/v1/accounts", body)["id"], range(count)))
        chunks = [ids[i : i + 1000] for i in range(0, len(ids), 1000)]
        for number, chunk in enumerate(chunks):
            items = [{"kind": "deposit", "account_id": a, "amount": funding_amount} for a in chunk]
            _post(http, "/v1/transfers/batch", {"items": items}, f"bench-fund-{token}-{number}")
    return ids


def post_backlog(bench: Bench, plan: Plan, batches: int) -> float:
    """POST `batches` batches of `plan`, a few at a time; return the seconds it took."""
    started = time.monotonic()
    with _setup_client(bench.api_url, bench.api_key) as http:

        def one(number: int) -> None:
            rng = random.Random(f"{plan.key_prefix}{number}")
            items = [transfer_item(*plan.pair(rng)) for _ in range(plan.items_per_request)]
            _post(http, plan.path, {"items": items}, f"{plan.key_prefix}{number}")

        with ThreadPoolExecutor(bench.options.batch_connections) as pool:
            list(pool.map(one, range(batches)))
    return time.monotonic() - started


def _failures(failed: int) -> str:
    return f"{failed:,} failed requests" if failed else ""


# --------------------------------------------------------------------------- stages


def hello(bench: Bench) -> None:
    print("hello-world ceiling: a bare Flask app under the same gunicorn settings", flush=True)
    process, url = start_web("hello", "bench.hello:app", bench.env, bench.log_dir)
    try:
        result = bench.client.run(
            url,
            Plan(kind="get", path="/health"),
            connections=bench.options.connections,
            seconds=bench.options.seconds,
        )
    finally:
        process.stop()
    bench.record(
        Figure(
            "hello",
            "hello-world ceiling (GET, bare Flask)",
            result.ok_per_second,
            "req/s",
            result.p50_ms,
            result.p99_ms,
            note=_failures(result.failed),
        )
    )


def single(bench: Bench) -> None:
    print("single-transfer accept rate: POST /v1/transfers, posting workers stopped", flush=True)
    settle(bench, posting=False)
    result = bench.client.run(
        bench.api_url,
        bench.plan("transfer"),
        connections=bench.options.connections,
        seconds=bench.options.seconds,
    )
    bench.record(
        Figure(
            "single",
            f"single accept, uniform over {len(bench.accounts):,} accounts",
            result.ok_per_second,
            "req/s",
            result.p50_ms,
            result.p99_ms,
            note=_failures(result.failed),
        )
    )


def batch(bench: Bench) -> None:
    items = bench.options.batch_items
    print(f"batch accept rate: POST /v1/transfers/batch of {items:,}, posting stopped", flush=True)
    settle(bench, posting=False)
    result = bench.client.run(
        bench.api_url,
        bench.plan("batch"),
        connections=bench.options.batch_connections,
        seconds=bench.options.seconds,
    )
    bench.record(
        Figure(
            "batch",
            f"batch accept ({items:,} items/request)",
            result.ok_per_second * items,
            "transfers/s",
            result.p50_ms,
            result.p99_ms,
            TARGET_BATCH,
            note=_failures(result.failed),
        )
    )


def drain(bench: Bench) -> None:
    for hot in (False, True):
        _drain_once(bench, hot=hot)


def _drain_once(bench: Bench, *, hot: bool) -> None:
    variant = "hot" if hot else "uniform"
    items = bench.options.batch_items
    batches = max(1, math.ceil(bench.options.backlog / items))
    print(
        f"backlog drain, {variant}: {batches * items:,} transfers accepted, then posted", flush=True
    )
    settle(bench, posting=False)
    mark = bench.books.seq_mark()
    accept_seconds = post_backlog(bench, bench.plan("batch", hot=hot), batches)
    ready = bench.posting.start()
    wait_drained(bench, bench.options.drain_timeout_seconds)
    wall_seconds = time.monotonic() - ready
    span = bench.books.drain_span(mark)
    if span.others:
        bench.anomaly(
            f"drain {variant}: {span.others:,} transfers did not post: {bench.books.statuses(mark)}"
        )
    who = "every transfer credits one merchant" if hot else f"uniform over {len(bench.accounts):,}"
    bench.record(
        Figure(
            f"drain_{variant}",
            f"backlog drain, {variant} ({who})",
            span.per_second,
            "transfers/s",
            note=(
                f"{span.posted:,} posted in {span.seconds:.2f} s (first posting to last); "
                f"{wall_seconds:.2f} s from workers ready to none PENDING; "
                f"backlog accepted in {accept_seconds:.1f} s"
            ),
        )
    )


def end_to_end(bench: Bench) -> None:
    _end_to_end_once(bench, "batch")
    _end_to_end_once(bench, "transfer")


def _end_to_end_once(bench: Bench, kind: str) -> None:
    label = "batch" if kind == "batch" else "single"
    print(f"end-to-end rate, {label} requests, posting workers running", flush=True)
    settle(bench, posting=True)
    books = bench.books
    mark = books.seq_mark()
    connections = "batch_connections" if kind == "batch" else "connections"
    result = bench.client.run(
        bench.api_url,
        bench.plan(kind),
        connections=getattr(bench.options, connections),
        seconds=bench.options.seconds,
    )
    # The window is the load's own: from its first acceptance, as long as the client
    # sent (a client's start-up, such as spawning processes, is not in it).
    start = books.first_accepted(mark)
    if start is None:
        raise RuntimeError(f"end-to-end {label}: nothing was accepted ({result})")
    window_seconds = result.duration_seconds
    end = start + timedelta(seconds=window_seconds)
    posted = books.finalized_between(mark, start, end)
    accepted = books.accepted_between(mark, start, end)
    wait_drained(bench)
    bench.record(
        Figure(
            f"e2e_{label}",
            f"end-to-end, {label} requests (posted in the window)",
            posted / window_seconds,
            "transfers/s",
            result.p50_ms,
            result.p99_ms,
            TARGET_E2E_BATCH if kind == "batch" else TARGET_E2E_SINGLE,
            note=(
                f"accepted {accepted / window_seconds:,.0f}/s; "
                f"{max(0, accepted - posted):,} accepted but not posted by the window's end"
                + (f"; {_failures(result.failed)}" if result.failed else "")
            ),
        )
    )


def latency(bench: Bench) -> None:
    if bench.options.latency_rate:
        rate = bench.options.latency_rate
    else:
        if "e2e_single" not in bench.figures:
            _end_to_end_once(bench, "transfer")
        rate = max(1.0, bench.figures["e2e_single"].value / 2)
    print(f"accepted-to-posted latency at a fixed {rate:,.0f} single transfers/s", flush=True)
    settle(bench, posting=True)
    mark = bench.books.seq_mark()
    # wrk cannot hold a rate: the built-in client schedules every request.
    result = PythonClient().run(
        bench.api_url,
        bench.plan("transfer"),
        connections=bench.options.latency_connections,
        seconds=bench.options.seconds,
        rate_per_second=rate,
    )
    upto = bench.books.seq_mark()
    wait_drained(bench)
    measured = bench.books.latency(mark, upto)
    bench.record(
        Figure(
            "latency",
            f"accepted-to-posted at {rate:,.0f}/s (half of e2e single)",
            measured.p99_ms,
            "ms",
            measured.p50_ms,
            measured.p99_ms,
            TARGET_LATENCY,
            note=(
                f"{measured.transfers:,} transfers, max {measured.max_ms:,.0f} ms; sent "
                f"{result.ok_per_second:,.0f}/s (request p50 {result.p50_ms:.1f} ms, "
                f"p99 {result.p99_ms:.1f} ms)"
                + (f"; {_failures(result.failed)}" if result.failed else "")
            ),
        )
    )


def raw(bench: Bench) -> None:
    clients = bench.options.pgbench_clients
    seconds = int(bench.options.pgbench_seconds or bench.options.seconds)
    print(f"raw-SQL limit with pgbench: {clients} clients, {seconds} s per case", flush=True)
    # Idle workers poll little, but the raw limit must have the machine to itself.
    settle(bench, posting=False)
    accounts = len(bench.accounts)
    rawsql.create_tables(bench.libpq_url, accounts)
    try:
        for case in rawsql.CASES:
            tps = rawsql.run_case(
                case,
                libpq_url=bench.libpq_url,
                accounts=accounts,
                clients=clients,
                seconds=seconds,
                work_dir=bench.work_dir,
                log_dir=bench.log_dir,
            )
            bench.record(
                Figure(case.key, case.label, tps, "transfers/s", note=f"{clients} clients")
            )
    finally:
        rawsql.drop_tables(bench.libpq_url)
    # The same work as posting, on the ledger's own schema, by PostgreSQL alone.
    transactions = max(1, bench.options.backlog // ledgersql.BATCH)
    for hot in (False, True):
        label = "hot account" if hot else "uniform"
        tps = ledgersql.run(
            libpq_url=bench.libpq_url,
            accounts=list(bench.accounts),
            transactions=transactions,
            hot=hot,
            work_dir=bench.work_dir,
            log_dir=bench.log_dir,
            seconds_max=bench.options.seconds * 10,
        )
        key = "ledger_sql_hot" if hot else "ledger_sql_uniform"
        bench.record(
            Figure(
                key,
                f"posting's writes in one SQL statement, 1,000/txn, {label}",
                tps,
                "transfers/s",
                note=f"1 client, {transactions * ledgersql.BATCH:,} transfers, ledger schema",
            )
        )


STAGES: dict[str, Callable[[Bench], None]] = {
    "hello": hello,
    "single": single,
    "batch": batch,
    "drain": drain,
    "e2e": end_to_end,
    "latency": latency,
    "raw": raw,
}
