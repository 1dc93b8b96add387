"""PostgreSQL repositories of API keys (their owners and expiry too), stored idempotent
responses and custom currencies."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from ledger_core.adapters.sql_connection import LazyConnection
from ledger_core.domain import limits
from ledger_core.domain.access import ApiKey, ApiKeyRecord, Scope
from ledger_core.service_layer.ports import StoredResponse

# Expiry by the database's clock, as revocation: every API process agrees on it.
FIND_ACTIVE_KEY = """
    SELECT id, scope, owner, expires_at FROM api_keys
    WHERE key_hash = %(hash)s AND revoked_at IS NULL
      AND (expires_at IS NULL OR expires_at > now())
"""
ADD_KEY = """
    INSERT INTO api_keys (id, name, scope, key_hash, owner, expires_at)
    VALUES (%(id)s, %(name)s, %(scope)s, %(hash)s, %(owner)s, %(expires_at)s)
"""
KEY_COLUMNS = "id, name, scope, owner, created_at, expires_at, revoked_at"
GET_KEY = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = %(id)s"
REVOKE_KEY = (
    "UPDATE api_keys SET revoked_at = now() WHERE id = %(id)s AND revoked_at IS NULL RETURNING id"
)
FIRST_KEYS = f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id LIMIT %(limit)s"
NEXT_KEYS = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id > %(after)s ORDER BY id LIMIT %(limit)s"

GET_RESPONSE = """
    SELECT request_hash, status_code, response_body,
           extract(epoch FROM created_at + make_interval(secs => %(ttl)s) - now()) AS expires_in
    FROM idempotency_keys
    WHERE api_key_id = %(api_key_id)s AND key = %(key)s
      AND created_at >= now() - make_interval(secs => %(ttl)s)
"""
# A row under the same key is replaced only once it has expired: a live key's response
# is never overwritten, whatever a caller does.
PUT_RESPONSE = """
    INSERT INTO idempotency_keys (api_key_id, key, request_hash, status_code, response_body)
    VALUES (%(api_key_id)s, %(key)s, %(request_hash)s, %(status_code)s, %(body)s)
    ON CONFLICT (api_key_id, key) DO UPDATE
    SET request_hash = excluded.request_hash, status_code = excluded.status_code,
        response_body = excluded.response_body, created_at = now()
    WHERE idempotency_keys.created_at < now() - make_interval(secs => %(ttl)s)
"""
PRUNE_RESPONSES = "DELETE FROM idempotency_keys WHERE created_at < %(older_than)s"

CUSTOM_EXPONENT = "SELECT exponent FROM custom_currencies WHERE code = %(code)s"
# RETURNING, not rowcount: the driver reports -1 for an INSERT ... ON CONFLICT.
ADD_CUSTOM = (
    "INSERT INTO custom_currencies (code, exponent) VALUES (%(code)s, %(exponent)s)"
    " ON CONFLICT DO NOTHING RETURNING code"
)
LIST_CUSTOM = "SELECT code, exponent FROM custom_currencies ORDER BY code"


def _key_record(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        row.id, row.name, row.scope, row.owner, row.created_at, row.expires_at, row.revoked_at
    )


class SqlApiKeyRepository:
    def __init__(self, connection: LazyConnection) -> None:
        self._c = connection

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
        self._c.exec_driver_sql(
            ADD_KEY,
            {
                "id": id,
                "name": name,
                "scope": scope,
                "hash": key_hash,
                "owner": owner,
                "expires_at": expires_at,
            },
        )

    def find_active(self, key_hash: bytes) -> ApiKey | None:
        row = self._c.exec_driver_sql(FIND_ACTIVE_KEY, {"hash": key_hash}).first()
        return None if row is None else ApiKey(row.id, Scope(row.scope), row.owner, row.expires_at)

    def get(self, key_id: str) -> ApiKeyRecord | None:
        row = self._c.exec_driver_sql(GET_KEY, {"id": key_id}).first()
        return None if row is None else _key_record(row)

    def revoke(self, key_id: str) -> bool:
        return self._c.exec_driver_sql(REVOKE_KEY, {"id": key_id}).first() is not None

    def list_page(self, *, after_id: str | None, limit: int) -> list[ApiKeyRecord]:
        if after_id is None:
            rows = self._c.exec_driver_sql(FIRST_KEYS, {"limit": limit})
        else:
            rows = self._c.exec_driver_sql(NEXT_KEYS, {"after": after_id, "limit": limit})
        return [_key_record(row) for row in rows]


class SqlIdempotencyRepository:
    def __init__(self, connection: LazyConnection) -> None:
        self._c = connection

    def get(
        self, api_key_id: str, key: str, *, ttl_seconds: int
    ) -> tuple[StoredResponse, float] | None:
        """The stored response under this key and the seconds it has left, unless it is
        older than `ttl_seconds`."""
        row = self._c.exec_driver_sql(
            GET_RESPONSE, {"api_key_id": api_key_id, "key": key, "ttl": ttl_seconds}
        ).first()
        if row is None:
            return None
        stored = (row.request_hash, row.status_code, row.response_body)
        return stored, float(row.expires_in)

    def put(
        self,
        api_key_id: str,
        key: str,
        *,
        request_hash: str,
        status_code: int,
        response_body: dict[str, Any],
    ) -> None:
        self._c.exec_driver_sql(
            PUT_RESPONSE,
            {
                "api_key_id": api_key_id,
                "key": key,
                "request_hash": request_hash,
                "status_code": status_code,
                "body": Jsonb(response_body),
                "ttl": limits.idempotency_ttl_seconds,
            },
        )

    def prune(self, *, older_than: datetime) -> int:
        return int(self._c.exec_driver_sql(PRUNE_RESPONSES, {"older_than": older_than}).rowcount)


class SqlCurrencyRepository:
    def __init__(self, connection: LazyConnection) -> None:
        self._c = connection

    def custom_exponent(self, code: str) -> int | None:
        value = self._c.exec_driver_sql(CUSTOM_EXPONENT, {"code": code}).scalar()
        return None if value is None else int(value)

    def add_custom(self, code: str, exponent: int) -> bool:
        inserted = self._c.exec_driver_sql(ADD_CUSTOM, {"code": code, "exponent": exponent})
        return inserted.first() is not None

    def list_custom(self) -> list[tuple[str, int]]:
        return [(row.code, row.exponent) for row in self._c.exec_driver_sql(LIST_CUSTOM)]
