"""Accepting money movements: store them PENDING with their Idempotency-Key, then wake the
posting workers. One database transaction per request, whether it holds one transfer or a
batch of `batch_items_max`.

A unique constraint on (API key, Idempotency-Key), not a read followed by a write, decides
whether a request acts: of two concurrent requests with one key, the second waits for the
first to commit and then replays what it stored.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ledger_core.domain import limits
from ledger_core.domain.access import ApiKey
from ledger_core.domain.ids import BATCH_PREFIX, TRANSFER_PREFIX, new_id
from ledger_core.domain.model import AcceptError, AccountFacts, TransferKind
from ledger_core.domain.records import BatchRecord, TransferRecord
from ledger_core.domain.rules import check_transfer, posting_shard
from ledger_core.service_layer.access import not_owned
from ledger_core.service_layer.errors import Failure, Response, StorageUnavailableError
from ledger_core.service_layer.idempotency import KEY_REUSED, replay
from ledger_core.service_layer.ports import (
    IdempotencyCache,
    KeyedRecord,
    NewBatch,
    NewTransfer,
    PendingWrite,
    StorePending,
    UnitOfWork,
    UnitOfWorkFactory,
    WakePosting,
)
from ledger_core.service_layer.reads import TRANSFER_NOT_FOUND

log = logging.getLogger(__name__)

ACCEPT_ERROR_DETAILS = {
    AcceptError.ACCOUNT_NOT_FOUND: "No such account.",
    AcceptError.CURRENCY_MISMATCH: "The two accounts hold different currencies.",
    AcceptError.SAME_ACCOUNT: "The source and destination accounts are the same.",
    AcceptError.SYSTEM_ACCOUNT: "System accounts cannot be named in a request.",
    AcceptError.AMOUNT_OUT_OF_RANGE: (
        f"amount must be an integer from {limits.amount_min} to {limits.amount_max}."
    ),
}


@dataclass(frozen=True, slots=True)
class MovementRequest:
    """A deposit names only its destination, a withdrawal only its source."""

    kind: TransferKind
    source_account_id: str | None
    destination_account_id: str | None
    amount: int
    description: str | None = None
    metadata: dict[str, str] | None = None


def _facts(uow: UnitOfWork, requests: Sequence[MovementRequest]) -> dict[str, AccountFacts]:
    """Every named account, and the system account of each currency a deposit or a
    withdrawal needs, keyed by id (system accounts also by `system:CUR`)."""
    named = {
        account_id
        for r in requests
        for account_id in (r.source_account_id, r.destination_account_id)
        if account_id is not None
    }
    facts = uow.accounts.facts(named)
    currencies = {
        facts[client].currency
        for r in requests
        if r.kind is not TransferKind.TRANSFER
        for client in (r.destination_account_id or r.source_account_id,)
        if client in facts
    }
    for currency in currencies:
        system = uow.accounts.system_facts(currency)
        if system is not None:
            facts[f"system:{currency}"] = system
    return facts


def _plan(
    request: MovementRequest,
    facts: dict[str, AccountFacts],
    *,
    shards: int,
    group_id: str | None = None,
    id: str | None = None,
) -> NewTransfer | AcceptError:
    source = facts.get(request.source_account_id or "")
    destination = facts.get(request.destination_account_id or "")
    # The other side of a deposit or a withdrawal is the system account of the client
    # account's currency (opened with the first account of that currency).
    if request.kind is TransferKind.DEPOSIT and destination is not None:
        source = facts.get(f"system:{destination.currency}")
    elif request.kind is TransferKind.WITHDRAWAL and source is not None:
        destination = facts.get(f"system:{source.currency}")
    error = check_transfer(request.kind, source, destination, request.amount)
    if error is not None:
        return error
    assert source is not None and destination is not None
    return NewTransfer(
        id=id or new_id(TRANSFER_PREFIX),
        kind=request.kind.value,
        source_account_id=source.id,
        destination_account_id=destination.id,
        amount=request.amount,
        currency=source.currency,
        description=request.description,
        metadata=request.metadata or {},
        shard=posting_shard(source.id, shards),
        group_id=group_id,
    )


def _replay_keyed(keyed: KeyedRecord, request_hash: str) -> Response | Failure:
    if keyed.request_hash != request_hash:
        return KEY_REUSED
    return Response(202, keyed.record.as_accepted().to_json(), replayed=True)


# Keys of money movements live on their transfers, keys of other requests in the stored
# responses: two namespaces in PostgreSQL, so two in the cache, or a copy in Redis could
# answer for the wrong one.
CACHE_NAMESPACE = "transfers:"


def _cache(
    cache: IdempotencyCache, api_key_id: str, key: str, request_hash: str, response: Response
) -> None:
    cache.put(
        api_key_id,
        CACHE_NAMESPACE + key,
        (request_hash, response.status_code, response.body),
        ttl_seconds=limits.idempotency_ttl_seconds,
    )


def _wake(wake: WakePosting, shards: Collection[int]) -> None:
    # Committed already: a wake-up that fails is covered by the sweeper, so the client
    # still gets its 202 rather than an error for stored money.
    for shard in sorted(shards):
        try:
            wake(shard)
        except Exception:
            log.exception("waking the posting workers failed; the sweeper will")


Stored = TransferRecord | KeyedRecord


def store_pending(
    uow_factory: UnitOfWorkFactory, writes: Sequence[PendingWrite]
) -> list[Stored | Exception]:
    """Store PENDING transfers in one transaction, each unless its key already created one;
    for each write, the transfer stored now or what its key created before.

    The API calls this with the writes of concurrent requests, so that they share one
    commit. Should the group fail for a reason that is not the database being away (a
    constraint one write breaks), each write is tried alone, so that one bad write does
    not refuse the others: its caller gets its exception in place of a result.
    """
    try:
        together: list[Stored | Exception] = [*_store_together(uow_factory, writes)]
        return together
    except StorageUnavailableError:
        raise
    except Exception:
        if len(writes) == 1:
            raise
        log.exception("storing %d transfers together failed; storing each alone", len(writes))
    alone: list[Stored | Exception] = []
    for write in writes:
        try:
            alone.append(_store_together(uow_factory, [write])[0])
        except StorageUnavailableError:
            raise
        except Exception as error:
            alone.append(error)
    return alone


def _store_together(uow_factory: UnitOfWorkFactory, writes: Sequence[PendingWrite]) -> list[Stored]:
    with uow_factory() as uow:
        stored = uow.transfers.add_pending(writes)
        missing = [
            (w.api_key_id, w.idempotency_key)
            for w in writes
            if w.transfer.id not in stored and w.idempotency_key is not None
        ]
        existing = uow.transfers.by_idempotency_keys(missing) if missing else {}
        uow.commit()
    results: list[Stored] = []
    for write in writes:
        created = stored.get(write.transfer.id)
        if created is None:
            assert write.idempotency_key is not None, "only a write with a key can conflict"
            created_before = existing.get((write.api_key_id, write.idempotency_key))
            assert created_before is not None, "the key that conflicted has its transfer"
            results.append(created_before)
        else:
            results.append(created)
    return results


def _store_alone(uow_factory: UnitOfWorkFactory, write: PendingWrite) -> Stored:
    result = store_pending(uow_factory, [write])[0]
    if isinstance(result, Exception):
        raise result
    return result


def _debited(request: MovementRequest, facts: dict[str, AccountFacts]) -> list[AccountFacts]:
    """The client account a planned movement takes money from: its source, except for a
    deposit (whose source is the system account)."""
    if request.kind is TransferKind.DEPOSIT or request.source_account_id is None:
        return []
    return [facts[request.source_account_id]]


def accept_transfer(
    uow_factory: UnitOfWorkFactory,
    cache: IdempotencyCache,
    wake: WakePosting,
    *,
    api_key: ApiKey,
    idempotency_key: str,
    request_hash: str,
    request: MovementRequest,
    shards: int = 1,
    store: StorePending | None = None,
) -> Response | Failure:
    """Store one PENDING transfer under its Idempotency-Key, then wake its posting shard.

    The accounts' facts (their owners too) come from a per-process cache (they never
    change), so a request usually costs its one INSERT, in a transaction that `store` may
    share with others. A key may debit only its owner's accounts (`domain/access.py`).
    """
    api_key_id = api_key.id
    cached = cache.get(api_key_id, CACHE_NAMESPACE + idempotency_key)
    if cached is not None:
        return replay(cached, request_hash)
    with uow_factory() as uow:
        facts = _facts(uow, [request])
    planned = _plan(request, facts, shards=shards)
    if isinstance(planned, AcceptError):
        return Failure(planned.value, ACCEPT_ERROR_DETAILS[planned])
    refused = not_owned(api_key, _debited(request, facts))
    if refused is not None:
        return refused
    write = PendingWrite(planned, api_key_id, idempotency_key, request_hash)
    stored = _store_alone(uow_factory, write) if store is None else store(write)
    if isinstance(stored, KeyedRecord):
        replayed = _replay_keyed(stored, request_hash)
        if isinstance(replayed, Response):
            # The key lives as long as its transfer: a refilled copy may too (24 h).
            _cache(cache, api_key_id, idempotency_key, request_hash, replayed)
        return replayed
    response = Response(202, stored.to_json())
    _cache(cache, api_key_id, idempotency_key, request_hash, response)
    _wake(wake, [planned.shard])
    return response


def accept_batch(
    uow_factory: UnitOfWorkFactory,
    wake: WakePosting,
    *,
    api_key: ApiKey,
    idempotency_key: str,
    request_hash: str,
    atomic: bool,
    requests: Sequence[MovementRequest],
    shards: int = 1,
) -> Response | Failure:
    """Store up to `batch_items_max` PENDING transfers in one transaction, or nothing.

    An item the accept rules refuse (or that debits an account the key may not) refuses
    the whole request, with its index. With `atomic`, the transfers form one group that
    the posting worker posts whole or not at all; the group's head is its first transfer,
    and its shard is the group's.
    """
    if not requests:
        return Failure("validation_error", "items must hold at least one item.")
    if len(requests) > limits.batch_items_max:
        return Failure(
            "too_many_items",
            f"A batch holds at most {limits.batch_items_max} items; got {len(requests)}.",
        )
    with uow_factory() as uow:
        facts = _facts(uow, requests)
        head_id = new_id(TRANSFER_PREFIX)
        group_id = head_id if atomic and len(requests) > 1 else None
        items: list[NewTransfer] = []
        for index, request in enumerate(requests):
            planned = _plan(
                request,
                facts,
                shards=shards,
                group_id=group_id,
                id=head_id if index == 0 else None,
            )
            if isinstance(planned, AcceptError):
                return Failure(
                    planned.value,
                    f"items[{index}]: {ACCEPT_ERROR_DETAILS[planned]}",
                    {"item_index": index},
                )
            refused = not_owned(api_key, _debited(request, facts), item_index=index)
            if refused is not None:
                return replace(refused, detail=f"items[{index}]: {refused.detail}")
            items.append(planned)
        if group_id is not None:
            # The head's shard claims the group; members follow it wherever they debit.
            items = [replace(item, shard=items[0].shard) for item in items]
        batch = NewBatch(
            id=new_id(BATCH_PREFIX),
            api_key_id=api_key.id,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            atomic=atomic,
            items=items,
        )
        record: BatchRecord | None = uow.transfers.add_batch(batch)
        if record is None:
            keyed = uow.transfers.batch_by_idempotency_key(api_key.id, idempotency_key)
            assert keyed is not None, "the key that conflicted has its batch"
            return _replay_keyed(keyed, request_hash)
        uow.commit()
    _wake(wake, {item.shard for item in items})
    return Response(202, record.to_json())


def get_transfer(uow_factory: UnitOfWorkFactory, transfer_id: str) -> dict[str, Any] | Failure:
    with uow_factory() as uow:
        record = uow.transfers.get(transfer_id)
    return TRANSFER_NOT_FOUND if record is None else record.to_json()


def get_batch(uow_factory: UnitOfWorkFactory, batch_id: str) -> dict[str, Any] | Failure:
    with uow_factory() as uow:
        record = uow.transfers.get_batch(batch_id)
    if record is None:
        return Failure("batch_not_found", "No such transfer batch.")
    return record.to_json()
