"""Concurrent postings against real PostgreSQL serialise on row locks and never deadlock."""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import Engine, text

from ledger_core.domain.model import Posted, Rejected, RejectionReason, TransferKind
from ledger_core.service_layer import ledger
from ledger_core.service_layer.access import Scope, authenticate, create_api_key
from ledger_core.service_layer.reconcile import reconcile

threads_count = 8


class NullCache:
    def get(self, api_key_id: str, key: str) -> None:
        return None

    def put(self, api_key_id: str, key: str, stored: Any) -> None:
        pass


def _open(uow_factory: Any, key_id: str, **fields: Any) -> str:
    response = ledger.open_account(
        uow_factory,
        NullCache(),
        api_key_id=key_id,
        idempotency_key=None,
        request_hash="",
        currency=fields.pop("currency", "USD"),
        name=None,
        metadata={},
        allow_overdraft=fields.pop("allow_overdraft", False),
    )
    return response.body["id"]


def _accept(
    uow_factory: Any, key_id: str, kind: TransferKind, src: Any, dst: Any, amount: int
) -> str:
    response = ledger.accept_transfer(
        uow_factory,
        NullCache(),
        lambda _id: None,  # no broker here: these tests post by calling the use case
        api_key_id=key_id,
        idempotency_key=secrets.token_hex(8),
        request_hash="h",
        kind=kind,
        source_account_id=src,
        destination_account_id=dst,
        amount=amount,
        description=None,
        metadata={},
    )
    return response.body["id"]


def _key_id(uow_factory: Any) -> str:
    secret = create_api_key(uow_factory, name="locking", scope=Scope.ADMIN)[1]
    found = authenticate(uow_factory, secret)
    assert found is not None
    return found[0]


def test_two_concurrent_postings_of_one_account_serialise(uow_factory: Any, engine: Engine) -> None:
    key_id = _key_id(uow_factory)
    source, destination = _open(uow_factory, key_id), _open(uow_factory, key_id)
    funding = _accept(uow_factory, key_id, TransferKind.DEPOSIT, None, source, 100)
    ledger.post_transfers(uow_factory, [funding])
    transfers = [
        _accept(uow_factory, key_id, TransferKind.TRANSFER, source, destination, 100)
        for _ in range(2)
    ]
    barrier = threading.Barrier(2)

    def post(transfer_id: str) -> list[Any]:
        barrier.wait()
        return ledger.post_transfers(uow_factory, [transfer_id])

    with ThreadPoolExecutor(2) as pool:
        outcomes = [o for result in pool.map(post, transfers) for o in result]

    assert sorted(type(o).__name__ for o in outcomes) == ["Posted", "Rejected"]
    rejected = next(o for o in outcomes if isinstance(o, Rejected))
    assert rejected.reason is RejectionReason.INSUFFICIENT_FUNDS
    with engine.connect() as connection:
        balance = connection.scalar(
            text("SELECT balance FROM accounts WHERE id = :id"), {"id": source}
        )
    assert balance == 0
    assert not any(reconcile(uow_factory).values())


def test_opposite_transfers_in_many_threads_never_deadlock(uow_factory: Any) -> None:
    key_id = _key_id(uow_factory)
    accounts = [_open(uow_factory, key_id, allow_overdraft=True) for _ in range(3)]
    transfers = [
        _accept(
            uow_factory, key_id, TransferKind.TRANSFER, accounts[i % 3], accounts[(i + 1) % 3], 7
        )
        for i in range(60)
    ] + [
        _accept(
            uow_factory, key_id, TransferKind.TRANSFER, accounts[(i + 1) % 3], accounts[i % 3], 5
        )
        for i in range(60)
    ]
    # Batches that overlap in accounts, posted from several threads at once.
    batches = [transfers[i::threads_count] for i in range(threads_count)]
    with ThreadPoolExecutor(threads_count) as pool:
        results = list(pool.map(lambda batch: ledger.post_transfers(uow_factory, batch), batches))
    assert sum(isinstance(o, Posted) for r in results for o in r) == 120
    assert not any(reconcile(uow_factory).values())


def test_posting_twice_posts_once(uow_factory: Any) -> None:
    key_id = _key_id(uow_factory)
    account = _open(uow_factory, key_id)
    deposit = _accept(uow_factory, key_id, TransferKind.DEPOSIT, None, account, 42)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ledger.post_transfers(uow_factory, [deposit]), range(4)))
    assert sum(len(r) for r in results) == 1
    assert ledger.post_transfers(uow_factory, [deposit]) == []
    assert ledger.get_account(uow_factory, account)["balance"]["posted"] == 42
