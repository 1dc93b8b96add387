"""Build books through the real use cases against the fake store: open accounts, accept
movements and batches, post them. Thin on purpose: every call goes through ledger_core."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

from fakes import TEST_API_KEY, FakeIdempotencyCache, FakeStore

from ledger_core.domain.access import ApiKey
from ledger_core.domain.model import Posted, TransferKind
from ledger_core.service_layer import accept as accept_service
from ledger_core.service_layer import accounts, posting
from ledger_core.service_layer.accept import MovementRequest
from ledger_core.service_layer.errors import Failure, Response
from ledger_core.service_layer.idempotency import request_fingerprint
from ledger_core.service_layer.ports import IdempotencyCache, WakePosting, no_wake

DEPOSIT, WITHDRAWAL, TRANSFER = TransferKind.DEPOSIT, TransferKind.WITHDRAWAL, TransferKind.TRANSFER
_keys = itertools.count()


def fresh_key() -> str:
    return f"idem-{next(_keys)}"


def open_account(
    store: FakeStore,
    cache: IdempotencyCache | None = None,
    *,
    currency: str = "USD",
    overdraft: bool = False,
    name: str | None = None,
    metadata: dict[str, str] | None = None,
    key: str | None = None,
    api_key: ApiKey = TEST_API_KEY,
) -> Response | Failure:
    body = {"currency": currency, "allow_overdraft": overdraft, "name": name, "metadata": metadata}
    return accounts.open_account(
        store,
        cache if cache is not None else FakeIdempotencyCache(),
        api_key=api_key,
        idempotency_key=key,
        request_hash=request_fingerprint("POST", "/v1/accounts", body),
        currency=currency,
        name=name,
        metadata=metadata or {},
        allow_overdraft=overdraft,
    )


def new_account(
    store: FakeStore,
    currency: str = "USD",
    *,
    overdraft: bool = False,
    api_key: ApiKey = TEST_API_KEY,
) -> str:
    result = open_account(store, currency=currency, overdraft=overdraft, api_key=api_key)
    assert isinstance(result, Response), result
    return str(result.body["id"])


def movement(
    kind: TransferKind,
    source: str | None = None,
    destination: str | None = None,
    amount: Any = 100,
    *,
    description: str | None = None,
    metadata: dict[str, str] | None = None,
) -> MovementRequest:
    return MovementRequest(kind, source, destination, amount, description, metadata)


def fingerprint(path: str, body: Any) -> str:
    return request_fingerprint("POST", path, body)


def _body(request: MovementRequest) -> dict[str, Any]:
    return {**dataclasses.asdict(request), "kind": request.kind.value}


def accept(
    store: FakeStore,
    request: MovementRequest,
    *,
    cache: IdempotencyCache | None = None,
    wake: WakePosting = no_wake,
    key: str | None = None,
    api_key: ApiKey = TEST_API_KEY,
    request_hash: str | None = None,
    shards: int = 1,
) -> Response | Failure:
    return accept_service.accept_transfer(
        store,
        cache if cache is not None else FakeIdempotencyCache(),
        wake,
        api_key=api_key,
        idempotency_key=key or fresh_key(),
        request_hash=request_hash or fingerprint(f"/v1/{request.kind.value}s", _body(request)),
        request=request,
        shards=shards,
    )


def accept_batch(
    store: FakeStore,
    requests: Sequence[MovementRequest],
    *,
    atomic: bool = False,
    wake: WakePosting = no_wake,
    key: str | None = None,
    api_key: ApiKey = TEST_API_KEY,
    request_hash: str | None = None,
    shards: int = 1,
) -> Response | Failure:
    body = {"atomic": atomic, "items": [_body(r) for r in requests]}
    return accept_service.accept_batch(
        store,
        wake,
        api_key=api_key,
        idempotency_key=key or fresh_key(),
        request_hash=request_hash or fingerprint("/v1/transfers/batch", body),
        atomic=atomic,
        requests=requests,
        shards=shards,
    )


def accepted_id(result: Response | Failure) -> str:
    assert isinstance(result, Response), result
    assert result.status_code == 202
    return str(result.body["id"])


def item_ids(result: Response | Failure) -> list[str]:
    assert isinstance(result, Response), result
    assert result.status_code == 202
    return [str(item["id"]) for item in result.body["items"]]


def deposit(store: FakeStore, account_id: str, amount: int = 100) -> str:
    return accepted_id(accept(store, movement(DEPOSIT, None, account_id, amount)))


def transfer(store: FakeStore, source: str, destination: str, amount: int = 100) -> str:
    return accepted_id(accept(store, movement(TRANSFER, source, destination, amount)))


def fund(store: FakeStore, account_id: str, amount: int) -> None:
    [outcome] = posting.post_transfers(store, [deposit(store, account_id, amount)])
    assert isinstance(outcome, Posted), outcome
