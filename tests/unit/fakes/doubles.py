"""Stand-ins for what is not the database: the Redis idempotency cache, the posting
wake-ups and the metrics; and helpers that read the store."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ledger_core.service_layer.ports import StoredResponse

from .rows import TransferRow
from .store import FakeStore


class FakeIdempotencyCache:
    """A dict standing in for Redis; values go through JSON as the Redis adapter's do."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], str] = {}
        self.ttls: dict[tuple[str, str], float] = {}
        self.gets = 0
        self.puts = 0

    def get(self, api_key_id: str, key: str) -> StoredResponse | None:
        self.gets += 1
        raw = self.data.get((api_key_id, key))
        if raw is None:
            return None
        request_hash, status_code, body = json.loads(raw)
        return request_hash, status_code, body

    def put(self, api_key_id: str, key: str, stored: StoredResponse, *, ttl_seconds: float) -> None:
        self.puts += 1
        self.data[(api_key_id, key)] = json.dumps(stored)
        self.ttls[(api_key_id, key)] = ttl_seconds

    def forget(self) -> None:
        """Lose everything, as Redis may after a restart."""
        self.data.clear()
        self.ttls.clear()


@dataclass(frozen=True)
class WakeCall:
    shard: int
    open_units_of_work: int
    # Committed PENDING transfers of that shard when the wake-up was sent.
    committed_pending: frozenset[str]


class RecordingWake:
    """A WakePosting that records what the database looked like when it was called."""

    def __init__(self, store: FakeStore, *, fail_with: Exception | None = None) -> None:
        self._store = store
        self._fail_with = fail_with
        self.calls: list[WakeCall] = []

    def __call__(self, shard: int) -> None:
        pending = frozenset(
            t.id
            for t in self._store.state.transfers.values()
            if t.status == "pending" and t.shard == shard
        )
        self.calls.append(WakeCall(shard, len(self._store.open_uows), pending))
        if self._fail_with is not None:
            raise self._fail_with

    @property
    def shards(self) -> list[int]:
        return [c.shard for c in self.calls]


class RecordingMetrics:
    """A Metrics that keeps what it was told."""

    def __init__(self) -> None:
        self.finalized: list[dict[str, int]] = []
        self.batches: list[int] = []
        self.failures: list[str] = []
        self.webhook_attempts: list[str] = []

    def transfers_finalized(
        self, counts_by_status: Mapping[str, int], latencies_seconds: Sequence[float]
    ) -> None:
        self.finalized.append(dict(counts_by_status))

    def posting_batch(self, size: int, duration_seconds: float) -> None:
        self.batches.append(size)

    def posting_failed(self, kind: str) -> None:
        self.failures.append(kind)

    def webhook_attempt(self, outcome: str) -> None:
        self.webhook_attempts.append(outcome)


def counted(store: FakeStore, name: str) -> int:
    """How many times a repository method was called, e.g. counted(store, "transfers.claim")."""
    return store.calls.count(name)


def with_status(store: FakeStore, status: str) -> list[TransferRow]:
    return [t for t in store.state.by_seq() if t.status == status]
