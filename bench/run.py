"""`make bench`: throughput and latency of the whole ledger, measured by hand in one run.

Starts everything it measures (PostgreSQL and Valkey, embedded unless DATABASE_URL and
REDIS_URL are both set; the API under gunicorn as the Procfile runs it; the Celery
posting workers), runs each stage with one HTTP client (wrk if installed, else the
built-in one), prints each figure as soon as it is measured, then a table of figures,
ratios and targets. Every process it started is stopped by its PID at the end, on
Ctrl-C and on failure too. Prints figures, asserts nothing: timings vary by machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench import logscan, report, stages
from bench.books import Books
from bench.load import make_client
from bench.stack import (
    PostingWorkers,
    admin_key,
    bench_database,
    libpq_url,
    process_env,
    servers,
    start_web,
)
from ledger_core.domain import limits

RATIO_SINGLE = report.Target(True, 0.3, ">= 0.3x")
RATIO_DRAIN = report.Target(True, 0.5, ">= 50 %")


def _positive(kind: Callable[[str], int | float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def parse_options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[0],
    )
    add = parser.add_argument
    add(
        "--only",
        action="append",
        choices=list(stages.STAGES),
        metavar="NAME",
        help=f"run only this stage (repeatable): {', '.join(stages.STAGES)}",
    )
    add(
        "--seconds",
        type=_positive(float),
        default=10.0,
        help="length of each load (default: %(default)s)",
    )
    add(
        "--backlog",
        type=_positive(int),
        default=50_000,
        help="transfers per drain backlog (default: %(default)s)",
    )
    add(
        "--accounts",
        type=_positive(int),
        default=1000,
        help="accounts the traffic spreads over (default: %(default)s)",
    )
    add(
        "--batch-items",
        type=_positive(int),
        default=1000,
        help="items per batch request (default: %(default)s)",
    )
    add(
        "--connections",
        type=_positive(int),
        default=16,
        help="connections for hello-world and single transfers (default: %(default)s, the"
        " API's 2 workers x 16 threads)",
    )
    add(
        "--batch-connections",
        type=_positive(int),
        default=4,
        help="connections for batch requests (default: %(default)s)",
    )
    add(
        "--latency-connections",
        type=_positive(int),
        default=16,
        help="connections of the rate-limited client (default: %(default)s)",
    )
    add(
        "--latency-rate",
        type=_positive(float),
        default=None,
        help="transfers/s of the latency stage (default: half the end-to-end single rate)",
    )
    add(
        "--pgbench-clients",
        type=_positive(int),
        default=2,
        help="pgbench clients (default: %(default)s, as many as posting processes)",
    )
    add(
        "--pgbench-seconds",
        type=_positive(int),
        default=None,
        help="length of each pgbench case (default: --seconds)",
    )
    add(
        "--drain-timeout-seconds",
        type=_positive(float),
        default=300.0,
        help="longest wait for a backlog to drain (default: %(default)s)",
    )
    add(
        "--client",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="HTTP load client (default: %(default)s: wrk when installed, else built-in)",
    )
    add(
        "--markdown",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the summary as Markdown here (e.g. docs/performance.md)",
    )
    options = parser.parse_args(argv)
    # Transfers need two distinct accounts; a batch the API would refuse measures nothing.
    if options.accounts < 2:
        parser.error("--accounts must be at least 2")
    if options.batch_items > limits.batch_items_max:
        parser.error(f"--batch-items must be at most {limits.batch_items_max} (the API's limit)")
    return options


def _ratios(figures: dict[str, report.Figure]) -> list[report.Ratio]:
    pairs = [
        ("single accept / hello-world", "single", "hello", False, RATIO_SINGLE),
        (
            "drain uniform / raw set-based 1,000/txn uniform",
            "drain_uniform",
            "raw_set1000_uniform",
            True,
            RATIO_DRAIN,
        ),
        (
            "drain hot / raw set-based 1,000/txn hot",
            "drain_hot",
            "raw_set1000_hot",
            True,
            RATIO_DRAIN,
        ),
        # What the worker costs beside the database doing the very same writes alone.
        (
            "drain uniform / posting's writes in SQL, uniform",
            "drain_uniform",
            "ledger_sql_uniform",
            True,
            None,
        ),
        ("drain hot / posting's writes in SQL, hot", "drain_hot", "ledger_sql_hot", True, None),
    ]
    return [
        report.Ratio(label, figures[a].value / figures[b].value, percent, target)
        for label, a, b, percent, target in pairs
        if a in figures and b in figures and figures[b].value
    ]


@dataclass
class Outcome:
    """What a run measured, kept even when a stage fails half-way."""

    figures: dict[str, report.Figure] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)


def _start_system(
    stack: contextlib.ExitStack,
    options: argparse.Namespace,
    run_dir: Path,
    context: dict[str, str],
    outcome: Outcome,
) -> stages.Bench:
    """Servers, database, API and workers, each registered on `stack` to be stopped."""
    log_dir, work_dir, metrics_dir = run_dir / "logs", run_dir / "work", run_dir / "metrics"
    for directory in (log_dir, work_dir, metrics_dir):
        directory.mkdir()
    client = make_client(options.client, work_dir)
    context["HTTP client"] = client.name
    print("starting the servers, the database, the API and the posting workers", flush=True)
    server_url, redis_url = stack.enter_context(servers(run_dir))
    database_url = stack.enter_context(bench_database(server_url))
    api_key = admin_key(database_url, redis_url)
    env = process_env(database_url, redis_url, metrics_dir)
    api, api_url = start_web("api", "api:create_app()", env, log_dir)
    stack.callback(api.stop)
    posting = PostingWorkers(env, log_dir)
    stack.callback(posting.stop)
    books = Books(libpq_url(database_url))
    stack.callback(books.close)
    context["PostgreSQL"] = books.server_version()
    print(f"  API PID {api.pid} at {api_url}; opening {options.accounts:,} accounts", flush=True)
    posting.start()
    accounts = stages.open_accounts(api_url, api_key, options.accounts)
    return stages.Bench(
        options=options,
        client=client,
        api_url=api_url,
        api_key=api_key,
        accounts=accounts,
        books=books,
        posting=posting,
        env=env,
        log_dir=log_dir,
        work_dir=work_dir,
        libpq_url=libpq_url(database_url),
        redis_url=redis_url,
        figures=outcome.figures,
        anomalies=outcome.anomalies,
    )


def _run(
    options: argparse.Namespace, run_dir: Path, context: dict[str, str], outcome: Outcome
) -> None:
    with contextlib.ExitStack() as stack:
        try:
            bench = _start_system(stack, options, run_dir, context, outcome)
            stages.wait_drained(bench)  # the accounts' funding deposits
            for name in options.only or list(stages.STAGES):
                stages.STAGES[name](bench)
        finally:
            # A second Ctrl-C must not cut the clean-up short: children would be left.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print("stopping everything", flush=True)


def _load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min)"


def _report(
    options: argparse.Namespace, run_dir: Path, context: dict[str, str], outcome: Outcome
) -> None:
    findings = logscan.scan(run_dir)
    figures, ratios = list(outcome.figures.values()), _ratios(outcome.figures)
    notes = logscan.describe(findings, outcome.anomalies)
    print("\n" + report.summary(figures, ratios, context, markdown=False))
    print(notes)
    if options.markdown is not None:
        body = report.summary(figures, ratios, context, markdown=True)
        options.markdown.write_text(f"{report.MARKDOWN_PREAMBLE}\n{body}\n```text\n{notes}```\n")
        print(f"summary written to {options.markdown}")


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    # SIGTERM ends the run like Ctrl-C: the clean-up stops every child by PID.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    run_dir = Path(tempfile.mkdtemp(prefix="ledger-bench-"))
    context = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        **report.machine(),
        # Other work on the machine skews every figure: say how busy it was.
        "load average at start": _load_average(),
        "command": " ".join(
            ["python -m bench", shlex.join(argv if argv is not None else sys.argv[1:])]
        ),
        "run directory (logs)": str(run_dir),
    }
    print(f"run directory (logs, scripts): {run_dir}", flush=True)
    outcome = Outcome()
    clock = time.monotonic()
    status = 0
    try:
        _run(options, run_dir, context, outcome)
    except KeyboardInterrupt:
        print("interrupted; everything the run started has been stopped")
        status = 130
    except Exception as error:
        # Stopped already; show what was measured before the failure, and the logs.
        traceback.print_exception(error)
        context["FAILED"] = f"{type(error).__name__}: {str(error)[:300]}"
        status = 1
    context["duration"] = f"{time.monotonic() - clock:.0f} s"
    context["load average at end"] = _load_average()
    _report(options, run_dir, context, outcome)
    return status
