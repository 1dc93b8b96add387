"""API keys and their scopes. Keys are random tokens; only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from enum import StrEnum

from ledger_core.domain import limits
from ledger_core.domain.currency import validate_custom_currency
from ledger_core.domain.ids import API_KEY_PREFIX, new_id
from ledger_core.service_layer.errors import Failure
from ledger_core.service_layer.ports import UnitOfWorkFactory

SECRET_PREFIX = "lk_"  # noqa: S105 (a prefix that makes leaked keys easy to grep for)
secret_entropy_bytes = 32


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


# Each scope includes the ones below it.
SCOPE_RANK = {Scope.READ: 0, Scope.WRITE: 1, Scope.ADMIN: 2}


def scope_allows(granted: str, required: Scope) -> bool:
    return SCOPE_RANK[Scope(granted)] >= SCOPE_RANK[required]


def hash_secret(secret: str) -> bytes:
    # The secret carries 256 random bits, so a fast hash is as safe as a slow one here.
    return hashlib.sha256(secret.encode()).digest()


def create_api_key(uow_factory: UnitOfWorkFactory, *, name: str, scope: Scope) -> tuple[str, str]:
    """Create a key; return (key id, secret). The secret is shown once and never stored."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(secret_entropy_bytes)
    key_id = new_id(API_KEY_PREFIX)
    with uow_factory() as uow:
        uow.api_keys.add(id=key_id, name=name, scope=scope.value, key_hash=hash_secret(secret))
        uow.commit()
    return key_id, secret


def authenticate(uow_factory: UnitOfWorkFactory, secret: str) -> tuple[str, str] | None:
    """Return (key id, scope) of an active key, or None."""
    with uow_factory() as uow:
        return uow.api_keys.find_active(hash_secret(secret))


class ApiKeyCache:
    """Answers of `authenticate`, remembered for `ttl_seconds` per secret, so that a request
    does not pay a database round trip to be let in. Revoking a key (or creating one)
    takes effect within `ttl_seconds`. Unknown secrets are remembered too, so that a
    client retrying a bad key does not hammer the database; the size is bounded."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        *,
        ttl_seconds: float = limits.api_key_cache_ttl_seconds,
        size_max: int = limits.api_key_cache_size_max,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._uow_factory = uow_factory
        self._ttl_seconds = ttl_seconds
        self._size_max = size_max
        self._monotonic = monotonic
        self._entries: dict[bytes, tuple[float, tuple[str, str] | None]] = {}
        self._lock = threading.Lock()

    def authenticate(self, secret: str) -> tuple[str, str] | None:
        key_hash = hash_secret(secret)
        now = self._monotonic()
        entry = self._entries.get(key_hash)
        if entry is not None and entry[0] > now:
            return entry[1]
        with self._uow_factory() as uow:
            found = uow.api_keys.find_active(key_hash)
        with self._lock:
            if len(self._entries) >= self._size_max:
                self._entries.clear()
            self._entries[key_hash] = (now + self._ttl_seconds, found)
        return found


def add_custom_currency(
    uow_factory: UnitOfWorkFactory, *, code: str, exponent: int
) -> Failure | None:
    problem = validate_custom_currency(code, exponent)
    if problem is not None:
        return Failure(problem, f"{code!r} with exponent {exponent} is not a valid custom unit.")
    with uow_factory() as uow:
        if not uow.currencies.add_custom(code, exponent):
            return Failure("currency_exists", f"{code!r} is already defined.")
        uow.commit()
    return None
