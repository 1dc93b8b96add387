"""An account's entries page in posting order (ascending id) whatever their `created_at`
says: entries written before migration 0006 carry their transaction's start time, so a
posting that started first but locked the account second has the larger id and the
earlier time."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from ledger_core.domain.model import TransferKind
from ledger_core.service_layer import accounts
from ledger_core.service_layer.pagination import Page
from tests.support.books import Books

deposits = 5


def test_entries_page_in_id_order_when_created_at_disagrees(
    uow_factory: Any, engine: Engine
) -> None:
    books = Books(uow_factory, name="entries-paging")
    account_id = books.open_account()
    for amount in range(1, deposits + 1):
        books.move(TransferKind.DEPOSIT, None, account_id, amount)
    with engine.begin() as connection:
        ids = (
            connection.execute(
                text("SELECT id FROM entries WHERE account_id = :a ORDER BY id"), {"a": account_id}
            )
            .scalars()
            .all()
        )
        assert len(ids) == deposits
        # Times in the reverse of id order, as a pre-0006 row's now() can be.
        connection.execute(text("ALTER TABLE entries DISABLE TRIGGER entries_are_immutable"))
        connection.execute(
            text(
                "UPDATE entries SET created_at = now() - make_interval(secs => id - :first)"
                " WHERE account_id = :a"
            ),
            {"a": account_id, "first": ids[0]},
        )
        connection.execute(text("ALTER TABLE entries ENABLE TRIGGER entries_are_immutable"))

    seen: list[int] = []
    cursor = None
    for _ in range(deposits + 1):
        page = accounts.list_entries(uow_factory, account_id, cursor=cursor, limit=1)
        assert isinstance(page, Page), page
        seen += [entry["id"] for entry in page.data]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert cursor is None, "the last page still pointed further"
    assert seen == [f"ent_{i}" for i in ids]
