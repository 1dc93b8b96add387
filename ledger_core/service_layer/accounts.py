"""Use cases of accounts: open one, read it with its balances, list accounts and entries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ledger_core.domain import limits
from ledger_core.domain.access import ApiKey, Scope, scope_allows
from ledger_core.domain.currency import Currency, iso_currency
from ledger_core.domain.ids import ACCOUNT_PREFIX, new_id
from ledger_core.domain.records import EntryRecord
from ledger_core.service_layer.errors import Failure, Response
from ledger_core.service_layer.idempotency import ActionResult, run_idempotent
from ledger_core.service_layer.pagination import Page, position, read_page
from ledger_core.service_layer.ports import IdempotencyCache, UnitOfWork, UnitOfWorkFactory

ACCOUNT_NOT_FOUND = Failure("account_not_found", "No such account.")


def resolve_currency(uow: UnitOfWork, code: str) -> Currency | None:
    iso = iso_currency(code)
    if iso is not None:
        return iso
    exponent = uow.currencies.custom_exponent(code)
    return None if exponent is None else Currency(code, exponent, custom=True)


OVERDRAFT_NEEDS_ADMIN = Failure(
    "forbidden", "Opening an account with allow_overdraft needs the `admin` scope."
)


def open_account(
    uow_factory: UnitOfWorkFactory,
    cache: IdempotencyCache,
    *,
    api_key: ApiKey,
    idempotency_key: str | None,
    request_hash: str,
    currency: str,
    name: str | None,
    metadata: dict[str, str],
    allow_overdraft: bool,
) -> Response | Failure:
    """Open an account owned by the key's owner. An account allowed to go below zero can
    create money for whoever may debit it, so only an admin key opens one."""
    if allow_overdraft and not scope_allows(api_key.scope, Scope.ADMIN):
        return OVERDRAFT_NEEDS_ADMIN

    def action(uow: UnitOfWork) -> ActionResult | Failure:
        if resolve_currency(uow, currency) is None:
            return Failure("unknown_currency", f"{currency!r} is not a known currency.")
        # Every currency in use has its system account, so deposits always have a source.
        uow.accounts.ensure_system_account(currency, new_id(ACCOUNT_PREFIX))
        account_id = new_id(ACCOUNT_PREFIX)
        uow.accounts.add(
            id=account_id,
            currency=currency,
            name=name,
            metadata=metadata,
            allow_overdraft=allow_overdraft,
            owner=api_key.owner,
        )
        record = uow.accounts.get(account_id)
        assert record is not None, "an account added in this transaction reads back"
        return Response(201, record.to_json()), None

    return run_idempotent(
        uow_factory,
        cache,
        api_key_id=api_key.id,
        key=idempotency_key,
        request_hash=request_hash,
        action=action,
    )


def get_account(uow_factory: UnitOfWorkFactory, account_id: str) -> dict[str, Any] | Failure:
    with uow_factory() as uow:
        record = uow.accounts.get(account_id)
    return ACCOUNT_NOT_FOUND if record is None else record.to_json()


def list_accounts(
    uow_factory: UnitOfWorkFactory, *, cursor: str | None, limit: int
) -> Page | Failure:
    return read_page(
        uow_factory,
        cursor,
        limit,
        lambda uow, after, n: uow.accounts.list_page(after_id=after, limit=n),
    )


def list_entries(
    uow_factory: UnitOfWorkFactory,
    account_id: str,
    *,
    cursor: str | None,
    limit: int,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> Page | Failure:
    """Entries of one account in posting order, oldest first (ascending entry id), those
    created in (created_after, created_before) if given."""

    def fetch(uow: UnitOfWork, after: int | None, n: int) -> list[EntryRecord] | Failure:
        if not uow.accounts.facts([account_id]):
            return ACCOUNT_NOT_FOUND
        return uow.entries.list_page(
            account_id,
            after_id=after,
            limit=n,
            created_after=created_after,
            created_before=created_before,
        )

    return read_page(uow_factory, cursor, limit, fetch, position)


def prune_idempotency_keys(uow_factory: UnitOfWorkFactory) -> int:
    older_than = datetime.now(UTC) - timedelta(seconds=limits.idempotency_ttl_seconds)
    with uow_factory() as uow:
        count = uow.idempotency.prune(older_than=older_than)
        uow.commit()
    return count
