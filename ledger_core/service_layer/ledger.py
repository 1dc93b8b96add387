"""Use cases of the books: open accounts, accept transfers, post them, read them back."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger_core.domain import limits
from ledger_core.domain.currency import Currency, iso_currency
from ledger_core.domain.ids import ACCOUNT_PREFIX, TRANSFER_PREFIX, new_id
from ledger_core.domain.model import (
    AcceptError,
    Outcome,
    TransferKind,
    TransferStatus,
    check_transfer,
    post_batch,
)
from ledger_core.domain.records import TransferRecord
from ledger_core.service_layer.errors import Failure, Response
from ledger_core.service_layer.idempotency import ActionResult, run_idempotent
from ledger_core.service_layer.pagination import Page, cursor_key, page_of
from ledger_core.service_layer.ports import (
    NULL_METRICS,
    EnqueueDeliveries,
    EnqueuePosting,
    IdempotencyCache,
    Metrics,
    UnitOfWorkFactory,
)
from ledger_core.service_layer.webhooks import write_events

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


def resolve_currency(uow: Any, code: str) -> Currency | None:
    iso = iso_currency(code)
    if iso is not None:
        return iso
    exponent = uow.currencies.custom_exponent(code)
    return None if exponent is None else Currency(code, exponent, custom=True)


def open_account(
    uow_factory: UnitOfWorkFactory,
    cache: IdempotencyCache,
    *,
    api_key_id: str,
    idempotency_key: str | None,
    request_hash: str,
    currency: str,
    name: str | None,
    metadata: dict[str, str],
    allow_overdraft: bool,
) -> Response | Failure:
    def action(uow: Any) -> ActionResult | Failure:
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
        )
        return Response(201, uow.accounts.get(account_id).to_json()), None

    return run_idempotent(
        uow_factory,
        cache,
        api_key_id=api_key_id,
        key=idempotency_key,
        request_hash=request_hash,
        action=action,
    )


def accept_transfer(
    uow_factory: UnitOfWorkFactory,
    cache: IdempotencyCache,
    enqueue: EnqueuePosting,
    *,
    api_key_id: str,
    idempotency_key: str,
    request_hash: str,
    kind: TransferKind,
    source_account_id: str | None,
    destination_account_id: str | None,
    amount: int,
    description: str | None,
    metadata: dict[str, str],
) -> Response | Failure:
    """Store a PENDING transfer with its idempotency key, then enqueue its posting.

    For a deposit the caller names only the destination, for a withdrawal only the
    source; the other side is the currency's system account.
    """

    def action(uow: Any) -> ActionResult | Failure:
        states = uow.accounts.states(
            [i for i in (source_account_id, destination_account_id) if i is not None]
        )
        source = states.get(source_account_id) if source_account_id else None
        destination = states.get(destination_account_id) if destination_account_id else None
        # The other side of a deposit or a withdrawal is the system account of the client
        # account's currency (opened with the first account of that currency).
        client = destination if kind is TransferKind.DEPOSIT else source
        if kind is not TransferKind.TRANSFER and client is not None:
            system = uow.accounts.system_state(client.currency)
            if kind is TransferKind.DEPOSIT:
                source = system
            else:
                destination = system
        error = check_transfer(kind, source, destination, amount)
        if error is not None:
            return Failure(error.value, ACCEPT_ERROR_DETAILS[error])
        assert source is not None and destination is not None
        record = uow.transfers.add(
            TransferRecord(
                id=new_id(TRANSFER_PREFIX),
                kind=kind.value,
                status=TransferStatus.PENDING.value,
                rejection_reason=None,
                source_account_id=source.id,
                destination_account_id=destination.id,
                amount=amount,
                currency=source.currency,
                description=description,
                metadata=metadata,
                created_at=None,
                posted_at=None,
            ),
            api_key_id=api_key_id,
        )
        return Response(202, record.to_json()), lambda: _enqueue_safely(enqueue, record.id)

    return run_idempotent(
        uow_factory,
        cache,
        api_key_id=api_key_id,
        key=idempotency_key,
        request_hash=request_hash,
        action=action,
    )


def _enqueue_safely(enqueue: EnqueuePosting, transfer_id: str) -> None:
    # The transfer is committed: if the broker is down now, the sweeper re-enqueues it
    # later, so the client still gets its 202 rather than an error for stored money.
    try:
        enqueue(transfer_id)
    except Exception:
        log.exception("enqueue failed; the sweeper will retry", extra={"transfer_id": transfer_id})


def post_transfers(
    uow_factory: UnitOfWorkFactory,
    transfer_ids: Sequence[str],
    *,
    enqueue_deliveries: EnqueueDeliveries | None = None,
    webhook_requeue_after_seconds: float = 120.0,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    metrics: Metrics = NULL_METRICS,
) -> list[Outcome]:
    """Post a batch of transfers in one database transaction.

    Locks the PENDING transfers, then their accounts in ascending id order, applies the
    rules in acceptance order, and writes entries, balances, statuses and the webhook
    outbox (events and deliveries) together. Transfers already final are skipped, so
    delivering the same task twice posts once.
    """
    unique_ids = list(dict.fromkeys(transfer_ids))
    if len(unique_ids) > limits.posting_batch_size_max:
        raise ValueError(f"batch of {len(unique_ids)} exceeds {limits.posting_batch_size_max}")
    with uow_factory() as uow:
        pending = uow.transfers.lock_pending(unique_ids)
        if not pending:
            return []
        account_ids = {t.source_account_id for t in pending} | {
            t.destination_account_id for t in pending
        }
        accounts = uow.accounts.lock(sorted(account_ids))
        result = post_batch(accounts, pending)
        uow.entries.add_posted(result.outcomes)
        uow.accounts.set_balances(result.balances)
        uow.transfers.finalize(result.outcomes)
        final = uow.transfers.get_many([o.transfer_id for o in result.outcomes])
        now = clock()
        delivery_ids = write_events(
            uow, final, now=now, requeue_after_seconds=webhook_requeue_after_seconds
        )
        uow.commit()
    metrics.posting_batch(len(final))
    for record in final:
        accepted_at = record.created_at
        metrics.transfer_finalized(
            record.status, None if accepted_at is None else (now - accepted_at).total_seconds()
        )
    if delivery_ids and enqueue_deliveries is not None:
        try:
            enqueue_deliveries(delivery_ids)
        except Exception:
            # Committed with their deliveries: the webhook scheduler enqueues them later.
            log.exception("enqueue of %d webhook deliveries failed", len(delivery_ids))
    return result.outcomes


def stale_pending_transfer_ids(
    uow_factory: UnitOfWorkFactory, *, age_min_seconds: int, limit: int
) -> list[str]:
    """PENDING transfers old enough that their task was probably lost."""
    older_than = datetime.now(UTC) - timedelta(seconds=age_min_seconds)
    with uow_factory() as uow:
        return uow.transfers.stale_pending_ids(older_than=older_than, limit=limit)


def prune_idempotency_keys(uow_factory: UnitOfWorkFactory) -> int:
    older_than = datetime.now(UTC) - timedelta(seconds=limits.idempotency_ttl_seconds)
    with uow_factory() as uow:
        count = uow.idempotency.prune(older_than=older_than)
        uow.commit()
    return count


def get_account(uow_factory: UnitOfWorkFactory, account_id: str) -> dict[str, Any] | Failure:
    with uow_factory() as uow:
        record = uow.accounts.get(account_id)
    if record is None:
        return Failure("account_not_found", "No such account.")
    return record.to_json()


def get_transfer(uow_factory: UnitOfWorkFactory, transfer_id: str) -> dict[str, Any] | Failure:
    with uow_factory() as uow:
        record = uow.transfers.get(transfer_id)
    if record is None:
        return Failure("transfer_not_found", "No such transfer.")
    return record.to_json()


def list_accounts(
    uow_factory: UnitOfWorkFactory, *, cursor: str | None, limit: int
) -> Page | Failure:
    after_id = cursor_key(cursor)
    if isinstance(after_id, Failure):
        return after_id
    with uow_factory() as uow:
        records = uow.accounts.list_page(after_id=after_id, limit=limit + 1)
    return page_of(records, limit)


def list_entries(
    uow_factory: UnitOfWorkFactory, account_id: str, *, cursor: str | None, limit: int
) -> Page | Failure:
    """Entries of one account in posting order, oldest first (ascending entry id)."""
    after_id = cursor_key(cursor, int)
    if isinstance(after_id, Failure):
        return after_id
    with uow_factory() as uow:
        if not uow.accounts.states([account_id]):
            return Failure("account_not_found", "No such account.")
        records = uow.entries.list_page(account_id, after_id=after_id, limit=limit + 1)
    return page_of(records, limit)
