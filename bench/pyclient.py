"""The built-in client: processes (one per core, past the GIL) of threads, each thread one
keep-alive connection sending a plan's requests. Unlike wrk it can hold a fixed rate:
each thread sends on its own schedule, the threads' schedules interleaved."""

from __future__ import annotations

import contextlib
import http.client
import multiprocessing
import os
import random
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from urllib.parse import urlsplit

from bench.load import LoadResult, Plan, percentile, request_timeout_seconds

start_timeout_seconds = 30
# Beyond the stage's seconds: the last requests' answers, and the results' transfer.
finish_margin_seconds = request_timeout_seconds + 30
# A thread stops at its deadline, or after this many requests, whichever comes first.
requests_per_thread_max = 10_000_000


@dataclass(frozen=True)
class _Spec:
    host: str
    port: int
    plan: Plan
    process_number: int
    threads: int
    # Threads of all processes, and where this process's first one is among them.
    threads_total: int
    first_thread: int
    seconds: float
    rate_per_second: float | None


@dataclass
class _Tally:
    ok: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)


class PythonClient:
    name = "python"

    def run(
        self,
        base_url: str,
        plan: Plan,
        *,
        connections: int,
        seconds: float,
        rate_per_second: float | None = None,
    ) -> LoadResult:
        parts = urlsplit(base_url)
        processes = max(1, min(connections, os.cpu_count() or 1))
        shares = [
            connections // processes + (i < connections % processes) for i in range(processes)
        ]
        specs = [
            _Spec(
                parts.hostname or "127.0.0.1",
                parts.port or 80,
                plan,
                number,
                threads,
                connections,
                sum(shares[:number]),
                seconds,
                rate_per_second,
            )
            for number, threads in enumerate(shares)
        ]
        # spawn: the parent runs threads (httpx, psycopg); a fork would copy their locks.
        context = multiprocessing.get_context("spawn")
        go = context.Event()
        ready, results = context.Queue(), context.Queue()
        children = [context.Process(target=_process, args=(s, go, ready, results)) for s in specs]
        try:
            for child in children:
                child.start()
            for _ in children:
                ready.get(timeout=start_timeout_seconds)
            go.set()
            collected = [results.get(timeout=seconds + finish_margin_seconds) for _ in children]
        finally:
            for child in children:
                child.join(timeout=start_timeout_seconds)
                if child.is_alive():
                    child.kill()
                    child.join(timeout=start_timeout_seconds)
        latencies = sorted(ms for _ok, _failed, ms_list, _s in collected for ms in ms_list)
        return LoadResult(
            ok=sum(c[0] for c in collected),
            failed=sum(c[1] for c in collected),
            duration_seconds=max(c[3] for c in collected),
            p50_ms=percentile(latencies, 0.50),
            p99_ms=percentile(latencies, 0.99),
            client=self.name,
        )


def _process(spec: _Spec, go: Event, ready: Queue, results: Queue) -> None:
    ready.put(spec.process_number)
    if not go.wait(start_timeout_seconds):
        return
    started = time.monotonic()
    tallies = [_Tally() for _ in range(spec.threads)]
    threads = [
        threading.Thread(target=_send_loop, args=(spec, spec.first_thread + i, started, tally))
        for i, tally in enumerate(tallies)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(spec.seconds + finish_margin_seconds)
    elapsed = time.monotonic() - started
    latencies = [ms for tally in tallies for ms in tally.latencies_ms]
    results.put((sum(t.ok for t in tallies), sum(t.failed for t in tallies), latencies, elapsed))


def _send_loop(spec: _Spec, thread_number: int, started: float, tally: _Tally) -> None:
    plan = spec.plan
    rng = random.Random(f"{plan.key_prefix}{thread_number}")
    headers = {**plan.headers, "Content-Type": "application/json"}
    deadline = started + spec.seconds
    # With a rate: thread k sends at started + (k + n * threads_total) / rate.
    interval = spec.threads_total / spec.rate_per_second if spec.rate_per_second else None
    next_send = started + (thread_number / spec.rate_per_second if spec.rate_per_second else 0)
    connection = http.client.HTTPConnection(spec.host, spec.port, timeout=request_timeout_seconds)
    for number in range(1, requests_per_thread_max + 1):
        now = time.monotonic()
        if interval is not None:
            if next_send >= deadline:
                break
            if now < next_send:
                time.sleep(next_send - now)
            next_send += interval
        elif now >= deadline:
            break
        if plan.kind == "get":
            method, body = "GET", None
        else:
            method, body = "POST", plan.body(rng)
            headers["Idempotency-Key"] = f"{plan.key_prefix}{thread_number}-{number}"
        sent = time.perf_counter()
        try:
            connection.request(method, plan.path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            tally.failed += 1
            connection.close()  # the next request reconnects
            continue
        if 200 <= response.status < 400:
            tally.ok += 1
            tally.latencies_ms.append((time.perf_counter() - sent) * 1000)
        else:
            tally.failed += 1
    with contextlib.suppress(OSError):
        connection.close()
