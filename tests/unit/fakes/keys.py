"""`FakeIdempotency`, `FakeApiKeys` and `FakeCurrencies`: stored responses, API keys and
custom currencies."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

from ledger_core.domain.access import ApiKey, ApiKeyRecord, Scope
from ledger_core.service_layer.ports import StoredResponse

from .base import _Repository
from .rows import ApiKeyRow, IdempotencyRow
from .schema import IDEMPOTENCY_TTL_SECONDS, _in_range, _json, _require


class FakeIdempotency(_Repository):
    table = "idempotency"

    def get(
        self, api_key_id: str, key: str, *, ttl_seconds: int
    ) -> tuple[StoredResponse, float] | None:
        s = self._statement("get")
        row = s.idempotency.get((api_key_id, key))
        if row is None or row.created_at < self._now - timedelta(seconds=ttl_seconds):
            return None
        expires_in = (row.created_at + timedelta(seconds=ttl_seconds) - self._now).total_seconds()
        return (row.request_hash, row.status_code, copy.deepcopy(row.response_body)), expires_in

    def put(
        self,
        api_key_id: str,
        key: str,
        *,
        request_hash: str,
        status_code: int,
        response_body: dict[str, Any],
    ) -> None:
        self._statement("put")
        inserted = self._uow.insert_unique(
            ("idempotency_keys", api_key_id, key),
            lambda state: (api_key_id, key) in state.idempotency,
        )
        s = self._s
        _require(api_key_id in s.api_keys, "fk_idempotency_keys_api_key_id_api_keys")
        existing = s.idempotency.get((api_key_id, key))
        expired_before = self._now - timedelta(seconds=IDEMPOTENCY_TTL_SECONDS)
        if not inserted and (existing is None or existing.created_at >= expired_before):
            return  # ON CONFLICT DO UPDATE ... WHERE expired: a live response is kept
        self._uow.wrote()
        s.idempotency[(api_key_id, key)] = IdempotencyRow(
            request_hash, status_code, _json(response_body), self._now
        )

    def prune(self, *, older_than: datetime) -> int:
        s = self._statement("prune")
        old = [k for k, row in s.idempotency.items() if row.created_at < older_than]
        if old:
            self._uow.wrote()
        for k in old:
            del s.idempotency[k]
        return len(old)


class FakeApiKeys(_Repository):
    table = "api_keys"

    def add(
        self,
        *,
        id: str,
        name: str,
        scope: str,
        key_hash: bytes,
        owner: str,
        expires_at: datetime | None,
    ) -> None:
        s = self._statement("add")
        _require(scope in ("read", "write", "admin"), "ck_api_keys_scope_known")
        _require(1 <= len(owner) <= 255, "ck_api_keys_owner_length")
        _require(id not in s.api_keys, "pk_api_keys")
        _require(all(k.key_hash != key_hash for k in s.api_keys.values()), "uq_api_keys_key_hash")
        self._uow.wrote()
        s.api_keys[id] = ApiKeyRow(
            id, name, scope, key_hash, owner, self._now, expires_at=expires_at
        )

    def find_active(self, key_hash: bytes) -> ApiKey | None:
        # `expires_at > now()`: the transaction's start, as PostgreSQL's now().
        for row in self._statement("find_active").api_keys.values():
            if row.key_hash == key_hash and row.revoked_at is None:
                if row.expires_at is not None and row.expires_at <= self._now:
                    return None
                return ApiKey(row.id, Scope(row.scope), row.owner, row.expires_at)
        return None

    def get(self, key_id: str) -> ApiKeyRecord | None:
        row = self._statement("get").api_keys.get(key_id)
        return None if row is None else row.record()

    def revoke(self, key_id: str) -> bool:
        s = self._statement("revoke")
        row = s.api_keys.get(key_id)
        if row is None or row.revoked_at is not None:
            return False
        self._uow.lock_row("api_keys", key_id)
        row = self._s.api_keys[key_id]
        if row.revoked_at is not None:
            return False
        self._uow.wrote()
        row.revoked_at = self._now
        return True

    def list_page(self, *, after_id: str | None, limit: int) -> list[ApiKeyRecord]:
        rows = sorted(self._statement("list_page").api_keys.values(), key=lambda k: k.id)
        return [k.record() for k in rows if after_id is None or k.id > after_id][:limit]


class FakeCurrencies(_Repository):
    table = "currencies"

    def custom_exponent(self, code: str) -> int | None:
        return self._statement("custom_exponent").custom_currencies.get(code)

    def add_custom(self, code: str, exponent: int) -> bool:
        self._statement("add_custom")
        _require(_in_range(exponent, 0, 18), "ck_custom_currencies_exponent_range")
        if not self._uow.insert_unique(
            ("custom_currencies", code), lambda state: code in state.custom_currencies
        ):
            return False
        self._uow.wrote()
        self._s.custom_currencies[code] = exponent
        return True

    def list_custom(self) -> list[tuple[str, int]]:
        return sorted(self._statement("list_custom").custom_currencies.items())
