"""Build books through the real use cases, without HTTP or a broker (posting is explicit)."""

from __future__ import annotations

import secrets
from typing import Any

from ledger_core.domain.model import TransferKind
from ledger_core.service_layer import accept, accounts, posting
from ledger_core.service_layer.access import Scope, authenticate, create_api_key
from ledger_core.service_layer.ports import NullIdempotencyCache, no_wake


class Books:
    def __init__(self, uow_factory: Any, name: str = "tests") -> None:
        self.uow_factory = uow_factory
        secret = create_api_key(uow_factory, name=name, scope=Scope.ADMIN)[1]
        found = authenticate(uow_factory, secret)
        assert found is not None
        self.key = found
        self.key_id = found.id

    def open_account(self, currency: str = "USD", *, allow_overdraft: bool = False) -> str:
        response = accounts.open_account(
            self.uow_factory,
            NullIdempotencyCache(),
            api_key=self.key,
            idempotency_key=None,
            request_hash="",
            currency=currency,
            name=None,
            metadata={},
            allow_overdraft=allow_overdraft,
        )
        return response.body["id"]

    def accept(
        self, kind: TransferKind, source: str | None, destination: str | None, amount: int
    ) -> str:
        """Accept a transfer; its enqueue goes nowhere, so only an explicit post moves it."""
        response = accept.accept_transfer(
            self.uow_factory,
            NullIdempotencyCache(),
            no_wake,
            api_key=self.key,
            idempotency_key=secrets.token_hex(8),
            request_hash="h",
            request=accept.MovementRequest(kind, source, destination, amount),
        )
        return response.body["id"]

    def move(
        self, kind: TransferKind, source: str | None, destination: str | None, amount: int
    ) -> str:
        transfer_id = self.accept(kind, source, destination, amount)
        posting.post_transfers(self.uow_factory, [transfer_id])
        return transfer_id
