"""Concurrent postings against real PostgreSQL serialise on row locks and never deadlock."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Engine, text

from ledger_core.domain.model import Posted, Rejected, RejectionReason, TransferKind
from ledger_core.service_layer import accounts, posting
from ledger_core.service_layer.reconcile import reconcile
from tests.support.books import Books

threads_count = 8


@pytest.fixture
def books(uow_factory: Any) -> Books:
    return Books(uow_factory, name="locking")


def test_two_concurrent_postings_of_one_account_serialise(
    uow_factory: Any, engine: Engine, books: Books
) -> None:
    source, destination = books.open_account(), books.open_account()
    funding = books.accept(TransferKind.DEPOSIT, None, source, 100)
    posting.post_transfers(uow_factory, [funding])
    transfers = [books.accept(TransferKind.TRANSFER, source, destination, 100) for _ in range(2)]
    barrier = threading.Barrier(2)

    def post(transfer_id: str) -> list[Any]:
        barrier.wait()
        return posting.post_transfers(uow_factory, [transfer_id])

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


def test_opposite_transfers_in_many_threads_never_deadlock(uow_factory: Any, books: Books) -> None:
    accounts = [books.open_account(allow_overdraft=True) for _ in range(3)]
    transfers = [
        books.accept(TransferKind.TRANSFER, accounts[i % 3], accounts[(i + 1) % 3], 7)
        for i in range(60)
    ] + [
        books.accept(TransferKind.TRANSFER, accounts[(i + 1) % 3], accounts[i % 3], 5)
        for i in range(60)
    ]
    # Batches that overlap in accounts, posted from several threads at once.
    batches = [transfers[i::threads_count] for i in range(threads_count)]
    with ThreadPoolExecutor(threads_count) as pool:
        results = list(pool.map(lambda batch: posting.post_transfers(uow_factory, batch), batches))
    assert sum(isinstance(o, Posted) for r in results for o in r) == 120
    assert not any(reconcile(uow_factory).values())


def test_posting_twice_posts_once(uow_factory: Any, books: Books) -> None:
    account = books.open_account()
    deposit = books.accept(TransferKind.DEPOSIT, None, account, 42)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: posting.post_transfers(uow_factory, [deposit]), range(4)))
    assert sum(len(r) for r in results) == 1
    assert posting.post_transfers(uow_factory, [deposit]) == []
    assert accounts.get_account(uow_factory, account)["balance"]["posted"] == 42
