"""PostgreSQL itself refuses broken books, whatever the application does: with every check
of the code bypassed (raw SQL), it refuses an overdraft, entries that do not balance per
currency, entries of unknown transfers or accounts, a second posting of a transfer, and any
deletion or change of what the books and the outbox hold."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors

from ledger_core.domain.model import TransferKind
from tests.support.books import Books


@pytest.fixture
def raw(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    plain = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as connection:
        yield connection
        connection.rollback()


@pytest.fixture
def books(uow_factory: Any) -> dict[str, str]:
    made = Books(uow_factory, name="guards")
    usd, other = made.open_account(), made.open_account()
    eur = made.open_account("EUR")
    posted = made.move(TransferKind.DEPOSIT, None, usd, 100)
    pending = made.accept(TransferKind.TRANSFER, usd, other, 10)
    return {"usd": usd, "other": other, "eur": eur, "posted": posted, "pending": pending}


def refused(raw: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> str:
    with pytest.raises(errors.IntegrityError) as caught:
        raw.execute(sql, params)
    raw.rollback()
    return str(caught.value)


def entries(*rows: tuple[str, str, int], first_leg: int = 100) -> tuple[str, dict[str, Any]]:
    # The leg is the entry's position in its movement, unique per movement: by default
    # clear of the legs a posting already wrote.
    values = ", ".join(
        f"(%(t{i})s, %(a{i})s, %(m{i})s, 0, {first_leg + i})" for i in range(len(rows))
    )
    params: dict[str, Any] = {}
    for i, (transfer, account, amount) in enumerate(rows):
        params |= {f"t{i}": transfer, f"a{i}": account, f"m{i}": amount}
    return (
        f"INSERT INTO entries (transfer_id, account_id, amount, balance_after, leg)"
        f" VALUES {values}",
        params,
    )


def test_an_overdraft_is_refused(raw: psycopg.Connection[Any], books: dict[str, str]) -> None:
    message = refused(
        raw, "UPDATE accounts SET balance = -1 WHERE id = %(id)s", {"id": books["other"]}
    )
    assert "ck_accounts_no_overdraft" in message


def test_entries_that_do_not_balance_are_refused(
    raw: psycopg.Connection[Any], books: dict[str, str]
) -> None:
    message = refused(raw, *entries((books["pending"], books["usd"], -10)))
    assert "USD sums to -10 instead of 0" in message
    message = refused(
        raw,
        *entries((books["pending"], books["usd"], -10), (books["pending"], books["other"], 9)),
    )
    assert "sums to -1" in message


def test_entries_across_currencies_are_refused(
    raw: psycopg.Connection[Any], books: dict[str, str]
) -> None:
    message = refused(
        raw,
        *entries((books["pending"], books["usd"], -10), (books["pending"], books["eur"], 10)),
    )
    assert "instead of 0" in message


def test_entries_of_unknown_transfers_or_accounts_are_refused(
    raw: psycopg.Connection[Any], books: dict[str, str]
) -> None:
    message = refused(
        raw, *entries(("tr_missing", books["usd"], -1), ("tr_missing", books["other"], 1))
    )
    assert "no such transfer" in message
    message = refused(
        raw,
        *entries((books["pending"], books["usd"], -1), (books["pending"], "acc_missing", 1)),
    )
    assert "no such account" in message


def test_a_second_posting_of_a_transfer_is_refused(
    raw: psycopg.Connection[Any], books: dict[str, str], uow_factory: Any
) -> None:
    with raw.cursor() as cursor:
        system = cursor.execute(
            "SELECT source_account_id FROM transfers WHERE id = %(t)s", {"t": books["posted"]}
        ).fetchone()
    assert system is not None
    # Posting it again writes its legs again: each leg of a movement is posted once.
    again = entries(
        (books["posted"], system[0], -100), (books["posted"], books["usd"], 100), first_leg=0
    )
    message = refused(raw, *again)
    assert "uq_entries_transfer_id_leg" in message


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM entries WHERE transfer_id = %(posted)s",
        "UPDATE entries SET amount = amount WHERE transfer_id = %(posted)s",
        "DELETE FROM transfers WHERE id = %(pending)s",
        "DELETE FROM accounts WHERE id = %(other)s",
        "DELETE FROM events WHERE transfer_id = %(posted)s",
        "DELETE FROM webhook_endpoints WHERE false",
        "TRUNCATE entries",
    ],
)
def test_the_books_and_the_outbox_are_append_only(
    raw: psycopg.Connection[Any], books: dict[str, str], statement: str
) -> None:
    assert "append-only" in refused(raw, statement, books)
