"""A unique constraint on (API key, Idempotency-Key), not a read then a write, decides who
acts: a request that meets an uncommitted first request with its key waits for it, then
replays its transfer if it committed, or acts itself if it rolled back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, text

from ledger_core.domain.model import TransferKind
from ledger_core.service_layer import accept, posting
from ledger_core.service_layer.errors import Response
from ledger_core.service_layer.ports import NullIdempotencyCache, no_wake
from tests.support.books import Books

lock_wait_timeout_seconds = 30


def _wait_until_blocked(engine: Engine) -> None:
    deadline = time.monotonic() + lock_wait_timeout_seconds
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            waiting = connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        if waiting:
            return
        time.sleep(0.05)
    raise AssertionError("the second request never waited for the first")


def _in_background(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(call()))
    thread.start()
    return thread, result


def _accept(uow_factory: Any, books: Books, account: str, key: str) -> Any:
    return accept.accept_transfer(
        uow_factory,
        NullIdempotencyCache(),
        no_wake,
        api_key=books.key,
        idempotency_key=key,
        request_hash="same-request",
        request=accept.MovementRequest(TransferKind.DEPOSIT, None, account, 5),
    )


def _first_request_in_flight(engine: Engine, books: Books, account: str, key: str) -> Any:
    """An open transaction that stored a transfer under the key and has not committed."""
    connection = engine.connect()
    transaction = connection.begin()
    system_id = connection.scalar(
        text("SELECT id FROM accounts WHERE is_system AND currency = 'USD'")
    )
    connection.execute(
        text(
            "INSERT INTO transfers (id, kind, source_account_id, destination_account_id,"
            " amount, currency, api_key_id, idempotency_key, request_hash)"
            " VALUES ('tr_first_' || :key, 'deposit', :system, :account, 5, 'USD', :api_key,"
            " :key, 'same-request')"
        ),
        {"key": key, "system": system_id, "account": account, "api_key": books.key_id},
    )
    return connection, transaction


def test_a_second_request_waits_for_the_first_then_replays_it(
    uow_factory: Any, engine: Engine
) -> None:
    books = Books(uow_factory, name="concurrent-keys")
    account = books.open_account()
    connection, transaction = _first_request_in_flight(engine, books, account, "k-commit")
    thread, result = _in_background(lambda: _accept(uow_factory, books, account, "k-commit"))
    _wait_until_blocked(engine)
    assert thread.is_alive()
    transaction.commit()
    connection.close()
    thread.join(lock_wait_timeout_seconds)

    [response] = result
    assert isinstance(response, Response)
    assert (response.status_code, response.replayed) == (202, True)
    assert response.body["id"] == "tr_first_k-commit"
    with engine.connect() as check:
        count = check.scalar(
            text("SELECT count(*) FROM transfers WHERE idempotency_key = 'k-commit'")
        )
    assert count == 1
    # Leave no PENDING transfer behind for the tests that reconcile after this one.
    assert len(posting.post_transfers(uow_factory, [response.body["id"]])) == 1


def test_a_second_request_acts_when_the_first_rolled_back(uow_factory: Any, engine: Engine) -> None:
    books = Books(uow_factory, name="concurrent-keys")
    account = books.open_account()
    connection, transaction = _first_request_in_flight(engine, books, account, "k-rollback")
    thread, result = _in_background(lambda: _accept(uow_factory, books, account, "k-rollback"))
    _wait_until_blocked(engine)
    transaction.rollback()
    connection.close()
    thread.join(lock_wait_timeout_seconds)

    [response] = result
    assert isinstance(response, Response)
    assert (response.status_code, response.replayed) == (202, False)
    assert response.body["id"] != "tr_first_k-rollback"
    with engine.connect() as check:
        count = check.scalar(
            text("SELECT count(*) FROM transfers WHERE idempotency_key = 'k-rollback'")
        )
    assert count == 1
    assert len(posting.post_transfers(uow_factory, [response.body["id"]])) == 1
