"""Accounts and their entries."""

from __future__ import annotations

from flask import Blueprint, current_app, request
from flask.typing import ResponseReturnValue

from api import schemas
from api.operations import Call, operation, page_limit, query_time
from api.routes.results import to_http
from ledger_core.service_layer import accounts, reads
from ledger_core.service_layer.access import Scope

bp = Blueprint("accounts", __name__)
PAGING = {"limit": "Page size, 1 to page_size_max.", "cursor": "next_cursor of the previous page."}


def _services():  # type: ignore[no-untyped-def]
    return current_app.extensions["ledger"]


@operation(
    bp,
    "POST",
    "/v1/accounts",
    summary="Open an account",
    scope=Scope.WRITE,
    body=schemas.AccountCreate,
    responses={201: schemas.Account, 422: None},
    idempotency="optional",
)
def create_account(call: Call) -> ResponseReturnValue:
    body: schemas.AccountCreate = call.body
    services = _services()
    return to_http(
        accounts.open_account(
            services.uow_factory,
            services.cache,
            api_key=call.api_key,
            idempotency_key=call.idempotency_key,
            request_hash=call.request_hash,
            currency=body.currency,
            name=body.name,
            metadata=body.metadata,
            allow_overdraft=body.allow_overdraft,
        )
    )


@operation(
    bp,
    "GET",
    "/v1/accounts/{account_id}",
    summary="Read an account and its balances, now or (as_of) its posted balance in the past",
    scope=Scope.READ,
    responses={200: schemas.Account, 400: None, 404: None},
    query={
        "as_of": "RFC 3339 time with its offset: the posted balance at that instant"
        " (pending and available are then null)."
    },
)
def get_account(call: Call, account_id: str) -> ResponseReturnValue:
    as_of = query_time("as_of")
    if as_of is not None:
        return to_http(reads.account_as_of(_services().uow_factory, account_id, as_of))
    return to_http(accounts.get_account(_services().uow_factory, account_id))


@operation(
    bp,
    "GET",
    "/v1/accounts",
    summary="List accounts, oldest first",
    scope=Scope.READ,
    responses={200: schemas.AccountList},
    query=PAGING,
)
def list_accounts(call: Call) -> ResponseReturnValue:
    return to_http(
        accounts.list_accounts(
            _services().uow_factory, cursor=request.args.get("cursor"), limit=page_limit()
        )
    )


@operation(
    bp,
    "GET",
    "/v1/accounts/{account_id}/entries",
    summary="List an account's entries in posting order, oldest first",
    scope=Scope.READ,
    responses={200: schemas.EntryList, 400: None, 404: None},
    query={
        **PAGING,
        "created_after": "RFC 3339 time with its offset: only entries posted after it.",
        "created_before": "RFC 3339 time with its offset: only entries posted before it.",
    },
)
def list_entries(call: Call, account_id: str) -> ResponseReturnValue:
    return to_http(
        accounts.list_entries(
            _services().uow_factory,
            account_id,
            cursor=request.args.get("cursor"),
            limit=page_limit(),
            created_after=query_time("created_after"),
            created_before=query_time("created_before"),
        )
    )
