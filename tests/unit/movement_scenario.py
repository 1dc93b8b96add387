"""Drive the money movements (transactions, payments, holds, reversals) through the real use
cases against the fake store, and post them as the workers would. Thin on purpose: every
call goes through ledger_core."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fakes import TEST_API_KEY, FakeIdempotencyCache, FakeStore
from scenario import fresh_key

from ledger_core.domain.access import ApiKey
from ledger_core.domain.model import Leg, TransferKind
from ledger_core.service_layer import movements, posting
from ledger_core.service_layer.errors import Failure, Response
from ledger_core.service_layer.idempotency import request_fingerprint
from ledger_core.service_layer.movements import CashbackRequest, Keyed
from ledger_core.service_layer.ports import IdempotencyCache, no_wake
from ledger_core.service_layer.reconcile import reconcile


def keyed(path: str, body: Any, key: str | None = None, api_key: ApiKey = TEST_API_KEY) -> Keyed:
    """The request's API key (an admin unless given), its Idempotency-Key (fresh unless
    given) and the fingerprint of its body."""
    return Keyed(api_key, key or fresh_key(), request_fingerprint("POST", path, body))


def _cache(cache: IdempotencyCache | None) -> IdempotencyCache:
    # A fresh cache unless given: a replay then goes to the (fake) database.
    return cache if cache is not None else FakeIdempotencyCache()


def transaction(
    store: FakeStore,
    legs: Sequence[tuple[str, int]],
    *,
    key: str | None = None,
    cache: IdempotencyCache | None = None,
    description: str | None = None,
    api_key: ApiKey = TEST_API_KEY,
) -> Response | Failure:
    body = {"entries": [list(leg) for leg in legs], "description": description}
    return movements.accept_transaction(
        store,
        _cache(cache),
        no_wake,
        keyed=keyed("/v1/transactions", body, key, api_key),
        legs=[Leg(account_id, amount) for account_id, amount in legs],
        description=description,
        metadata={},
        effective_at=None,
    )


def payment(
    store: FakeStore,
    customer: str,
    merchant: str,
    amount: int,
    cashback: CashbackRequest | None = None,
    *,
    key: str | None = None,
    cache: IdempotencyCache | None = None,
    api_key: ApiKey = TEST_API_KEY,
) -> Response | Failure:
    body = [customer, merchant, amount, None if cashback is None else repr(cashback)]
    return movements.accept_payment(
        store,
        _cache(cache),
        no_wake,
        keyed=keyed("/v1/payments", body, key, api_key),
        customer_account_id=customer,
        merchant_account_id=merchant,
        amount=amount,
        cashback=cashback,
        description=None,
        metadata={},
        clock=store.now,
    )


def hold(
    store: FakeStore,
    source: str,
    destination: str,
    amount: int,
    *,
    expires_in_seconds: int | None = None,
    key: str | None = None,
    api_key: ApiKey = TEST_API_KEY,
) -> Response | Failure:
    body = [source, destination, amount, expires_in_seconds]
    return movements.accept_hold(
        store,
        FakeIdempotencyCache(),
        no_wake,
        keyed=keyed("/v1/holds", body, key, api_key),
        source_account_id=source,
        destination_account_id=destination,
        amount=amount,
        expires_in_seconds=expires_in_seconds,
        description=None,
        metadata={},
    )


def act(
    store: FakeStore,
    hold_id: str,
    kind: TransferKind,
    amount: int | None = None,
    *,
    key: str | None = None,
    cache: IdempotencyCache | None = None,
    api_key: ApiKey = TEST_API_KEY,
) -> Response | Failure:
    """Capture (all, or `amount`) or void a hold, as of the store's clock."""
    return movements.act_on_hold(
        store,
        _cache(cache),
        no_wake,
        keyed=keyed(f"/v1/holds/{hold_id}/{kind.value}", {"amount": amount}, key, api_key),
        hold_id=hold_id,
        kind=kind,
        amount=amount,
        clock=store.now,
    )


def capture(store: FakeStore, hold_id: str, amount: int | None = None) -> Response | Failure:
    return act(store, hold_id, TransferKind.CAPTURE, amount)


def void(store: FakeStore, hold_id: str) -> Response | Failure:
    return act(store, hold_id, TransferKind.VOID)


def reverse(
    store: FakeStore,
    original_id: str,
    amount: int | None = None,
    *,
    key: str | None = None,
    api_key: ApiKey = TEST_API_KEY,
    of: movements.ReverseOf = movements.ANY_MOVEMENT,
) -> Response | Failure:
    return movements.reverse(
        store,
        FakeIdempotencyCache(),
        no_wake,
        keyed=keyed(f"/v1/transactions/{original_id}/reverse", {"amount": amount}, key, api_key),
        original_id=original_id,
        amount=amount,
        reason=None,
        of=of,
    )


def expire_due(store: FakeStore) -> int:
    """Beat's run at the store's clock."""
    return movements.release_due_holds(store, no_wake, clock=store.now)


def post_all(store: FakeStore) -> int:
    """Drain shard 0 as a posting task would; how many movements it finalised."""
    report = posting.drain(store)
    assert not report.more_work
    return report.transfers


def accepted(result: Response | Failure) -> dict[str, Any]:
    assert isinstance(result, Response), result
    assert result.status_code == 202, result
    return result.body


def failed(result: Response | Failure) -> str:
    assert isinstance(result, Failure), result
    return result.code


def broken_rules(store: FakeStore) -> dict[str, list[tuple[str, int]]]:
    """The reconciliation rules the books break (empty when they balance)."""
    return {rule: rows for rule, rows in reconcile(store).items() if rows}
