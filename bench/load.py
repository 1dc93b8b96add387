"""What a load client is asked to send (a Plan) and what it reports (a LoadResult), shared
by both clients: wrk when installed, else the built-in multi-process Python client.

A plan says which requests to make, not how: wrk renders it as a Lua script, the Python
client builds the same requests itself, so every stage can run on either.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Protocol

# A batch of a thousand items takes far longer than wrk's default 2 s timeout under load.
request_timeout_seconds = 30


@dataclass(frozen=True)
class Plan:
    """Requests of one kind: GET `path`, or POST transfers between `account_ids`, one per
    request or `items_per_request` per batch. With `hot_account_id`, every transfer
    credits that account (a merchant) from a uniformly chosen other one."""

    kind: str  # "get", "transfer" or "batch"
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    account_ids: tuple[str, ...] = ()
    hot_account_id: str | None = None
    items_per_request: int = 1
    # Idempotency-Key = prefix + worker number + request number: unique across a run.
    key_prefix: str = ""

    @cached_property
    def sources(self) -> tuple[str, ...]:
        """The accounts that may be debited: all but the hot one."""
        return tuple(a for a in self.account_ids if a != self.hot_account_id)

    def pair(self, rng: random.Random) -> tuple[str, str]:
        """(source, destination), two distinct accounts."""
        if self.hot_account_id is not None:
            return rng.choice(self.sources), self.hot_account_id
        source, destination = rng.sample(self.account_ids, 2)
        return source, destination

    def body(self, rng: random.Random) -> bytes:
        if self.kind == "transfer":
            source, destination = self.pair(rng)
            return json.dumps(transfer_item(source, destination, kind=None)).encode()
        items = [transfer_item(*self.pair(rng)) for _ in range(self.items_per_request)]
        return json.dumps({"items": items}).encode()


def transfer_item(source: str, destination: str, kind: str | None = "transfer") -> dict:
    item = {"source_account_id": source, "destination_account_id": destination, "amount": 1}
    return item if kind is None else {"kind": kind, **item}


@dataclass(frozen=True)
class LoadResult:
    # Answers in 2xx/3xx.
    ok: int
    # Answers outside 2xx/3xx, and socket errors (connect, read, write, timeout).
    failed: int
    duration_seconds: float
    # Latency of the answered requests.
    p50_ms: float
    p99_ms: float
    client: str

    @property
    def ok_per_second(self) -> float:
        return self.ok / self.duration_seconds if self.duration_seconds else 0.0


class LoadClient(Protocol):
    name: str

    def run(
        self,
        base_url: str,
        plan: Plan,
        *,
        connections: int,
        seconds: float,
        rate_per_second: float | None = None,
    ) -> LoadResult:
        """Send `plan`'s requests over `connections` keep-alive connections for `seconds`,
        as fast as answered or, with `rate_per_second`, at that fixed total rate."""
        ...


def make_client(choice: str, work_dir: Path) -> LoadClient:
    """wrk if installed (`auto`), else the built-in Python client; or the one asked for."""
    from bench.pyclient import PythonClient  # noqa: PLC0415 (only one client is needed)
    from bench.wrk import WrkClient  # noqa: PLC0415

    wrk = shutil.which("wrk")
    if choice == "python" or (choice == "auto" and wrk is None):
        return PythonClient()
    if wrk is None:
        raise RuntimeError("--client wrk: wrk is not installed (not found on PATH)")
    return WrkClient(wrk, work_dir)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list; 0 for an empty one."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]
