"""Posting: PENDING transfers become entries, balances and a final status.

A posting task is woken, not told what to post: holding its shard (one drainer at a
time), it claims up to `posting_batch_size_max` PENDING transfers with FOR NO KEY UPDATE
SKIP LOCKED (so anything else posting by id takes a disjoint set), locks their accounts
once each in ascending id order (so two postings never deadlock),
applies the posting rules in acceptance order, and writes entries, balances, statuses and
the webhook outbox in one transaction with a handful of set-based statements. It loops
while work remains, within bounds of count and time.

A batch that fails for a reason other than money (a bug, a corrupt row) is split in
halves until the transfers that fail alone are found; the others post. Those are retried
later and quarantined after `posting_attempts_max` failures: never retried forever, and
never holding up their neighbours.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from ledger_core.domain import limits
from ledger_core.domain.ids import new_id
from ledger_core.domain.model import (
    POSTED_OUTCOMES,
    TWO_ACCOUNT_KINDS,
    AccountState,
    Outcome,
    Posted,
    Rejected,
    RejectionReason,
    TransferKind,
    TransferToPost,
)
from ledger_core.domain.movement_records import EntryView, TransactionRecord
from ledger_core.domain.posting import post_batch, rejected_hold_changes
from ledger_core.domain.webhooks import EVENT_PREFIX, EVENT_TYPES, transaction_event_payload
from ledger_core.service_layer.clock import Clock, utc_now
from ledger_core.service_layer.errors import StorageRefusedError
from ledger_core.service_layer.ports import (
    NULL_METRICS,
    BroughtEvent,
    Claim,
    ClaimedTransfer,
    EnqueueDeliveries,
    Metrics,
    Outbox,
    UnitOfWork,
    UnitOfWorkFactory,
    WakePosting,
)

log = logging.getLogger(__name__)

Unit = list[ClaimedTransfer]  # a single transfer, or a whole atomic group


class PostingBrokenError(Exception):
    """Every transfer of a batch fails to post, even alone: the fault is the system's
    (a schema or code defect), not theirs, so none of them is counted towards quarantine."""


@dataclass(frozen=True, slots=True)
class BatchReport:
    claimed: int
    # The claim stopped at its limit: more may be waiting.
    full: bool
    outcomes: list[Outcome]
    quarantined: list[str]


@dataclass(frozen=True, slots=True)
class DrainReport:
    batches: int
    transfers: int
    # Stopped by a bound, not for want of work: whoever called should wake posting again.
    more_work: bool


@dataclass(frozen=True, slots=True)
class PostingOptions:
    enqueue_deliveries: EnqueueDeliveries | None = None
    webhook_requeue_after_seconds: float = 120.0
    # Times of the webhook outbox; the transaction's own timestamp when None.
    clock: Clock | None = None
    metrics: Metrics = NULL_METRICS
    attempts_max: int = limits.posting_attempts_max
    retry_delays_seconds: tuple[float, ...] = limits.posting_retry_delays_seconds


DEFAULT_OPTIONS = PostingOptions()


def drain(
    uow_factory: UnitOfWorkFactory,
    *,
    shard: int = 0,
    batch_size_max: int = limits.posting_batch_size_max,
    batches_max: int = limits.posting_drain_batches_max,
    seconds_max: float = limits.posting_drain_seconds_max,
    options: PostingOptions = DEFAULT_OPTIONS,
    monotonic: Callable[[], float] = time.monotonic,
) -> DrainReport:
    """Post claimed batches until none is full, or a bound is reached."""
    started = monotonic()
    transfers = 0
    for batch in range(1, batches_max + 1):
        report = post_claimed(uow_factory, shard=shard, limit=batch_size_max, options=options)
        transfers += report.claimed
        if not report.full:
            return DrainReport(batch, transfers, more_work=False)
        if monotonic() - started >= seconds_max:
            break
    return DrainReport(batch, transfers, more_work=True)


def post_transfers(
    uow_factory: UnitOfWorkFactory,
    transfer_ids: Sequence[str],
    *,
    clock: Clock | None = None,
    options: PostingOptions = DEFAULT_OPTIONS,
) -> list[Outcome]:
    """Post these transfers if they are still PENDING and nobody else holds them (tools
    and tests; workers claim instead). Transfers already final are skipped, so posting
    the same ids twice posts once."""
    unique_ids = list(dict.fromkeys(transfer_ids))
    if len(unique_ids) > limits.posting_batch_size_max:
        raise ValueError(f"batch of {len(unique_ids)} exceeds {limits.posting_batch_size_max}")
    if clock is not None:
        options = replace(options, clock=clock)
    report = post_claimed(
        uow_factory,
        shard=0,
        limit=limits.posting_batch_size_max,
        only_ids=unique_ids,
        options=options,
    )
    return report.outcomes


def post_claimed(
    uow_factory: UnitOfWorkFactory,
    *,
    shard: int,
    limit: int,
    only_ids: Sequence[str] | None = None,
    options: PostingOptions = DEFAULT_OPTIONS,
) -> BatchReport:
    """Claim and post one batch; on a failure that is not about money, isolate it."""
    claimed: list[ClaimedTransfer] = []
    full: list[bool] = []
    try:
        return _post_once(
            uow_factory,
            shard=shard,
            limit=limit,
            only_ids=only_ids,
            options=options,
            claimed_out=claimed,
            full_out=full,
        )
    except (StorageRefusedError, ValueError) as error:
        # Refused by the database, or a broken invariant of the posting rules: the data
        # of some transfer is at fault. Anything else (the database away, a time limit)
        # propagates: the whole batch is tried again later, as it was.
        if not claimed:
            raise  # failed before it claimed anything: not the transfers' fault
        log.exception("posting a batch of %d failed; isolating the cause", len(claimed))
        options.metrics.posting_failed("batch")
        report = _isolate(uow_factory, _units(claimed), error, options)
        # A full claim means more may be waiting, whatever became of this batch.
        return replace(report, full=bool(full and full[0]))


def _post_once(
    uow_factory: UnitOfWorkFactory,
    *,
    shard: int,
    limit: int,
    only_ids: Sequence[str] | None,
    options: PostingOptions,
    claimed_out: list[ClaimedTransfer],
    full_out: list[bool] | None = None,
) -> BatchReport:
    started = time.monotonic()
    with uow_factory() as uow:
        claim = uow.transfers.claim(shard=shard, limit=limit, only_ids=only_ids)
        if not claim.transfers:
            return BatchReport(0, False, [], [])
        claimed_out += claim.transfers
        if full_out is not None:
            full_out.append(claim.full)
        outcomes, delivery_ids = _write_batch(uow, claim, options)
        uow.commit()
    _after_commit(claim.transfers, outcomes, delivery_ids, time.monotonic() - started, options)
    return BatchReport(len(claim.transfers), claim.full, outcomes, [])


def _movement(c: ClaimedTransfer) -> TransferToPost:
    kind = TransferKind(c.kind)
    # A hold's own movement is the hold: its id is the hold's id.
    hold_id = c.id if kind is TransferKind.HOLD else c.hold_id
    if c.legs:
        return TransferToPost(
            c.id, c.legs, c.group_id, kind, hold_id, c.reverses_id, c.reversal_amount
        )
    assert c.source_account_id is not None and c.destination_account_id is not None
    return TransferToPost.between(
        c.id,
        c.source_account_id,
        c.destination_account_id,
        c.amount,
        c.group_id,
        kind=kind,
        hold_id=hold_id,
        reverses_id=c.reverses_id,
        reversal_amount=c.reversal_amount,
    )


def _write_batch(
    uow: UnitOfWork, claim: Claim, options: PostingOptions
) -> tuple[list[Outcome], list[str]]:
    movements = [_movement(c) for c in claim.transfers]
    # Locks in one order everywhere: the claimed movements, holds, reversed originals,
    # then accounts, each in ascending id order.
    settled = {
        m.hold_id for m in movements if m.hold_id is not None and m.kind is not TransferKind.HOLD
    }
    holds = uow.holds.lock(settled) if settled else {}
    reversed_ids = {m.reverses_id for m in movements if m.reverses_id is not None}
    originals = uow.transfers.lock_originals(reversed_ids) if reversed_ids else {}
    accounts = uow.accounts.lock({leg.account_id for m in movements for leg in m.legs})
    result = post_batch(accounts, movements, holds=holds, originals=originals)
    uow.entries.add_posted(result.outcomes)
    uow.accounts.set_balances(result.balances, result.held)
    uow.holds.apply(result.holds)
    uow.transfers.set_reversed(result.reversed)
    outbox = Outbox(
        time=options.clock() if options.clock is not None else claim.now,
        requeue_after_seconds=options.webhook_requeue_after_seconds,
    )
    payloads = _brought_events(
        uow, movements, result.outcomes, accounts=accounts, now=claim.now, outbox=outbox
    )
    delivery_ids = uow.transfers.finalize(
        result.outcomes, now=claim.now, outbox=outbox, payloads=payloads
    )
    return result.outcomes, delivery_ids


def _brought_events(
    uow: UnitOfWork,
    movements: Sequence[TransferToPost],
    outcomes: Sequence[Outcome],
    *,
    accounts: Mapping[str, AccountState],
    now: datetime,
    outbox: Outbox,
) -> dict[str, BroughtEvent]:
    """Events of the movements the posting statement does not build itself: anything but
    a two-account transfer, shown as a transaction with its final entries."""
    others = {m.id: m for m in movements if m.kind not in TWO_ACCOUNT_KINDS}
    if not others:
        return {}
    records = uow.transfers.movements(list(others))
    brought: dict[str, BroughtEvent] = {}
    for outcome in outcomes:
        movement = others.get(outcome.transfer_id)
        if movement is None:
            continue
        record = _final(records[outcome.transfer_id], outcome, accounts, now)
        event_type = EVENT_TYPES[(record.kind, record.status)].value
        event_id = new_id(EVENT_PREFIX)
        brought[outcome.transfer_id] = BroughtEvent(
            event_id,
            transaction_event_payload(event_id, event_type, outbox.time, record),
            tuple(dict.fromkeys(leg.account_id for leg in movement.legs)),
        )
    return brought


def _final(
    record: TransactionRecord,
    outcome: Outcome,
    accounts: Mapping[str, AccountState],
    now: datetime,
) -> TransactionRecord:
    if isinstance(outcome, Rejected):
        return replace(
            record,
            status="rejected",
            rejection_reason=outcome.reason.value,
            rejected_account_id=outcome.account_id,
        )
    entries = record.entries
    if isinstance(outcome, Posted):
        by_leg = {entry.leg: entry for entry in outcome.entries}
        entries = [
            EntryView(e.account_id, e.amount, accounts[e.account_id].currency, e.balance_after)
            for _, e in sorted(by_leg.items())
        ]
    return replace(record, status="posted", posted_at=now, entries=entries)


def _after_commit(
    claimed: Sequence[ClaimedTransfer],
    outcomes: Sequence[Outcome],
    delivery_ids: list[str],
    duration_seconds: float,
    options: PostingOptions,
) -> None:
    posted = sum(isinstance(o, POSTED_OUTCOMES) for o in outcomes)
    counts = {"posted": posted, "rejected": len(outcomes) - posted}
    # Accepted to committed, by this process's clock, for an even sample of the batch: a
    # histogram observation per transfer would cost more than the rest of the bookkeeping,
    # and the finalised counter already counts every one.
    committed_at = datetime.now(UTC)
    samples_max = limits.posting_latency_samples_per_batch_max
    step = max(1, -(-len(claimed) // samples_max))  # ceiling division: at most samples_max
    latencies = [(committed_at - c.created_at).total_seconds() for c in claimed[::step]]
    options.metrics.posting_batch(len(outcomes), duration_seconds)
    options.metrics.transfers_finalized(counts, latencies)
    # One line per batch, not per transfer: a thousand lines would cost more than the
    # posting. Each transfer id is on it, so the logs still follow a transfer.
    log.info(
        "posting batch committed",
        extra={
            "transfer_ids": [o.transfer_id for o in outcomes],
            "counts": counts,
            "duration_ms": round(duration_seconds * 1000, 2),
        },
    )
    if delivery_ids and options.enqueue_deliveries is not None:
        try:
            options.enqueue_deliveries(delivery_ids)
        except Exception:
            # Committed with their deliveries: the webhook scheduler enqueues them later.
            log.exception("enqueue of %d webhook deliveries failed", len(delivery_ids))


def _units(transfers: Sequence[ClaimedTransfer]) -> list[Unit]:
    units: list[Unit] = []
    for claimed in transfers:
        if claimed.group_id is not None and units and units[-1][0].group_id == claimed.group_id:
            units[-1].append(claimed)
        else:
            units.append([claimed])
    return units


def _isolate(
    uow_factory: UnitOfWorkFactory, units: list[Unit], error: Exception, options: PostingOptions
) -> BatchReport:
    """Post the units in halves, in order, until the ones that fail alone are found; count
    a failed attempt for each of those, quarantining what reached the limit."""
    failing: list[tuple[Unit, Exception]] = []
    outcomes: list[Outcome] = []
    parts: list[list[Unit]] = [units]
    if len(units) == 1:
        failing.append((units[0], error))
        parts = []
    # Each split halves a part, so this ends after at most 2 * len(units) transactions.
    while parts:
        part = parts.pop()
        ids = [c.id for unit in part for c in unit if c.group_id in (None, c.id)]
        size = sum(len(unit) for unit in part)
        try:
            report = _post_once(
                uow_factory, shard=0, limit=size, only_ids=ids, options=options, claimed_out=[]
            )
            outcomes += report.outcomes
        except (StorageRefusedError, ValueError) as part_error:
            if len(part) == 1:
                failing.append((part[0], part_error))
            else:
                middle = len(part) // 2
                parts += [part[middle:], part[:middle]]  # the older half is posted first
    claimed = sum(len(unit) for unit in units)
    if len(units) > 1 and len(failing) == len(units):
        options.metrics.posting_failed("systematic")
        raise PostingBrokenError(f"all {len(units)} units of a batch fail alone") from error
    quarantined: list[str] = []
    for unit, unit_error in failing:
        quarantined += _count_failure(uow_factory, unit, unit_error, options)
    return BatchReport(claimed, False, outcomes, quarantined)


def _count_failure(
    uow_factory: UnitOfWorkFactory, unit: Unit, error: Exception, options: PostingOptions
) -> list[str]:
    ids = [c.id for c in unit]
    description = f"{type(error).__name__}: {error}"[: limits.posting_error_length_max]
    with uow_factory() as uow:
        quarantined = uow.transfers.record_posting_failure(
            ids,
            error=description,
            attempts_max=options.attempts_max,
            retry_delays_seconds=options.retry_delays_seconds,
        )
        uow.commit()
    options.metrics.posting_failed("transfer")
    if quarantined:
        options.metrics.posting_failed("quarantined")
        log.error("transfers quarantined after repeated posting failures: %s", quarantined)
    else:
        log.warning("posting of %s failed; it will be retried: %s", ids, description)
    return quarantined


def wake_stale(
    uow_factory: UnitOfWorkFactory,
    wake: WakePosting,
    *,
    age_min_seconds: float,
    clock: Clock = utc_now,
) -> dict[int, int]:
    """The sweeper: wake every shard holding claimable PENDING transfers older than
    `age_min_seconds` (a wake-up lost to a broker outage, a crashed worker, a retry that
    came due). It wakes posting rather than naming transfers, so it cannot pile work up,
    and posting claims oldest first whatever is stuck, so nothing is starved."""
    older_than = clock() - timedelta(seconds=age_min_seconds)
    with uow_factory() as uow:
        stale = uow.transfers.stale_shards(older_than=older_than)
    for shard in sorted(stale):
        wake(shard)
    return stale


def reject_quarantined(
    uow_factory: UnitOfWorkFactory,
    transfer_id: str,
    *,
    webhook_requeue_after_seconds: float = DEFAULT_OPTIONS.webhook_requeue_after_seconds,
    clock: Clock = utc_now,
) -> list[str]:
    """Give up on a quarantined movement (with its atomic group): rejected as
    `posting_failed`, as the posting rejects anything: its event written, its hold
    rejected, or the hold it acted on given back to other actions. Returns the ids
    rejected (none if it was not quarantined)."""
    with uow_factory() as uow:
        released = uow.transfers.release_quarantined_ids(transfer_id)
        if not released:
            return []
        # Released to PENDING just now, in this transaction: claimed back at once.
        claim = uow.transfers.claim(shard=0, limit=len(released), only_ids=released)
        movements = [_movement(c) for c in claim.transfers]
        settled = {
            m.hold_id
            for m in movements
            if m.hold_id is not None and m.kind is not TransferKind.HOLD
        }
        holds = uow.holds.lock(settled) if settled else {}
        uow.holds.apply(rejected_hold_changes(movements, holds))
        outcomes: list[Outcome] = [
            Rejected(m.id, RejectionReason.POSTING_FAILED) for m in movements
        ]
        now = clock()
        outbox = Outbox(time=now, requeue_after_seconds=webhook_requeue_after_seconds)
        payloads = _brought_events(uow, movements, outcomes, accounts={}, now=now, outbox=outbox)
        uow.transfers.finalize(outcomes, now=now, outbox=outbox, payloads=payloads)
        uow.commit()
    return [m.id for m in movements]


def release_quarantined(uow_factory: UnitOfWorkFactory, transfer_id: str) -> bool:
    """Give a quarantined transfer back to posting with a fresh count of attempts."""
    with uow_factory() as uow:
        released = bool(uow.transfers.release_quarantined_ids(transfer_id))
        uow.commit()
    return released
