"""`ledger reconcile` passes clean books and catches each kind of corruption we plant."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config

from devstack import create_database
from ledger_core.adapters.database import make_engine
from ledger_core.adapters.sql import SqlUnitOfWorkFactory
from ledger_core.config import Settings, normalize_database_url
from ledger_core.domain.model import Leg, TransferKind
from ledger_core.service_layer import movements, posting, webhooks
from ledger_core.service_layer.errors import Response
from ledger_core.service_layer.ports import NullIdempotencyCache
from tests.support.books import Books
from tests.support.processes import run_ledger

ROOT = Path(__file__).resolve().parents[2]


class AllowAll:
    def check(self, url: str) -> None:
        return None


@pytest.fixture
def books(servers: tuple[str, str]) -> Iterator[dict[str, Any]]:
    """A scratch database of its own, since these tests corrupt it on purpose."""
    name = f"ledger_reconcile_{secrets.token_hex(4)}"
    url = normalize_database_url(create_database(servers[0], name))
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    command.upgrade(config, "head")
    engine = make_engine(Settings(database_url=url, redis_url=servers[1]))
    uow_factory = SqlUnitOfWorkFactory(engine)
    made = Books(uow_factory)
    alice, bob = made.open_account(), made.open_account()
    # An endpoint, so that postings leave deliveries behind (nobody attempts them here).
    webhooks.create_endpoint(
        uow_factory,
        AllowAll(),
        url="https://receiver.example/",
        events=None,
        account_ids=None,
        description=None,
    )
    funded = made.move(TransferKind.DEPOSIT, None, alice, 1_000)
    moved = made.move(TransferKind.TRANSFER, alice, bob, 300)
    extra = _movements(uow_factory, made, alice, bob, moved)
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    yield {
        "url": url,
        "plain": plain,
        "alice": alice,
        "bob": bob,
        "funded": funded,
        "moved": moved,
        **extra,
    }
    engine.dispose()
    admin = servers[0].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _movements(uow_factory: Any, made: Books, alice: str, bob: str, moved: str) -> dict[str, str]:
    """An active hold, a transaction and a partial reversal: the rules for them apply."""

    def keyed() -> movements.Keyed:
        return movements.Keyed(made.key, secrets.token_hex(8), "h")

    cache, wake = NullIdempotencyCache(), lambda shard: None
    hold = movements.accept_hold(
        uow_factory,
        cache,
        wake,
        keyed=keyed(),
        source_account_id=alice,
        destination_account_id=bob,
        amount=100,
        expires_in_seconds=None,
        description=None,
        metadata={},
    )
    split = movements.accept_transaction(
        uow_factory,
        cache,
        wake,
        keyed=keyed(),
        legs=[Leg(alice, -30), Leg(bob, 20), Leg(bob, 10)],
        description=None,
        metadata={},
        effective_at=None,
    )
    refund = movements.reverse(
        uow_factory, cache, wake, keyed=keyed(), original_id=moved, amount=50, reason=None
    )
    ids = {"hold": hold, "split": split, "refund": refund}
    assert all(isinstance(r, Response) for r in ids.values()), ids
    posting.post_transfers(uow_factory, [r.body["id"] for r in ids.values()])  # type: ignore[union-attr]
    return {name: r.body["id"] for name, r in ids.items()}  # type: ignore[union-attr]


def reconcile(url: str) -> subprocess.CompletedProcess[str]:
    return run_ledger("reconcile", "--pending-age-max-seconds", "60", database_url=url)


def corrupt(plain_url: str, *statements: str, **params: Any) -> None:
    with psycopg.connect(plain_url, autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement, params)


def failed_rules(result: subprocess.CompletedProcess[str]) -> set[str]:
    return {
        line.split()[1].rstrip(":")
        for line in result.stdout.splitlines()
        if line.startswith("FAIL")
    }


def test_clean_books_pass(books: dict[str, Any]) -> None:
    # Deliveries just created are due now, not overdue.
    result = reconcile(books["url"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert failed_rules(result) == set()
    assert "ok   transfer_entries_do_not_sum_to_zero" in result.stdout


def test_a_balance_nudged_without_an_entry_is_caught(books: dict[str, Any]) -> None:
    corrupt(
        books["plain"],
        "UPDATE accounts SET balance = balance + 1 WHERE id = %(id)s",
        id=books["bob"],
    )
    result = reconcile(books["url"])
    assert result.returncode == 1
    assert failed_rules(result) == {
        "balance_differs_from_entries",
        "balance_differs_from_last_balance_after",
    }
    assert books["bob"] in result.stdout


def test_an_unbalanced_entry_is_caught(books: dict[str, Any]) -> None:
    corrupt(
        books["plain"],
        # The books are append-only: lift that guard to simulate a bug that got past it.
        "ALTER TABLE entries DISABLE TRIGGER entries_are_immutable",
        "UPDATE entries SET amount = amount + 5 WHERE transfer_id = %(t)s AND amount > 0",
        t=books["moved"],
    )
    result = reconcile(books["url"])
    assert result.returncode == 1
    assert {
        "transfer_entries_do_not_sum_to_zero",
        "currency_entries_do_not_sum_to_zero",
        "balance_differs_from_entries",
    } <= failed_rules(result)
    assert books["moved"] in result.stdout


def test_a_negative_balance_without_overdraft_is_caught(books: dict[str, Any]) -> None:
    # The database forbids it; drop the guard to simulate a bug that slipped past both.
    corrupt(
        books["plain"],
        "ALTER TABLE accounts DROP CONSTRAINT ck_accounts_no_overdraft",
        "UPDATE accounts SET balance = -1 WHERE id = %(id)s",
        id=books["alice"],
    )
    result = reconcile(books["url"])
    assert result.returncode == 1
    assert "negative_balance_without_overdraft" in failed_rules(result)


def test_stuck_work_is_caught(books: dict[str, Any]) -> None:
    corrupt(
        books["plain"],
        "UPDATE webhook_deliveries SET next_attempt_at = now() - interval '1 day'",
    )
    corrupt(
        books["plain"],
        "UPDATE transfers SET status = 'pending', posted_at = NULL, finalized_at = NULL,"
        " created_at = now() - interval '1 hour' WHERE id = %(t)s",
        t=books["funded"],
    )
    result = reconcile(books["url"])
    assert result.returncode == 1
    # A pending transfer with entries also breaks the entry-count rule.
    assert {
        "transfer_pending_too_long",
        "posted_movement_with_wrong_entry_count",
        "webhook_delivery_overdue",
    } <= failed_rules(result)


@pytest.mark.parametrize(
    ("statements", "rules"),
    [
        (
            ["UPDATE accounts SET held_out = held_out + 1 WHERE id = %(alice)s"],
            {"held_differs_from_active_holds"},
        ),
        (
            [
                "UPDATE holds SET status = 'voided' WHERE id = %(hold)s",
            ],
            {"held_differs_from_active_holds", "hold_differs_from_its_actions"},
        ),
        (
            ["UPDATE transfers SET reversed_amount = 0 WHERE id = %(moved)s"],
            {"reversed_amount_differs_from_reversals"},
        ),
        (
            # A posted leg that says other than its entry.
            ["UPDATE transfer_legs SET amount = -31 WHERE transfer_id = %(split)s AND leg = 0"],
            {"entry_differs_from_its_leg"},
        ),
        (
            # Reserved beyond the balance, past the database's check.
            [
                "ALTER TABLE accounts DROP CONSTRAINT ck_accounts_no_overdraft",
                "UPDATE holds SET amount = 10000 WHERE id = %(hold)s",
                "UPDATE accounts SET held_out = 10000 WHERE id = %(alice)s",
                "UPDATE accounts SET held_in = held_in + 9900 WHERE id = %(bob)s",
            ],
            {"available_negative_without_overdraft"},
        ),
        (
            [
                "ALTER TABLE transfers DROP CONSTRAINT ck_transfers_reversed_within_amount",
                "UPDATE transfers SET reversal_amount = 400 WHERE id = %(refund)s",
                "UPDATE transfers SET reversed_amount = 400 WHERE id = %(moved)s",
            ],
            {"reversals_exceed_original"},
        ),
    ],
)
def test_each_movement_rule_catches_its_corruption(
    books: dict[str, Any], statements: list[str], rules: set[str]
) -> None:
    corrupt(books["plain"], *statements, **{k: v for k, v in books.items() if k != "plain"})
    result = reconcile(books["url"])
    assert result.returncode == 1
    assert failed_rules(result) == rules, result.stdout
