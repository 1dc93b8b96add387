"""API keys: created with a scope, an owner and perhaps an expiry, checked on every request
(through a short cache), revoked by an operator. Keys are random tokens; only their SHA-256
is stored. What a key may do is decided by the rules of `domain/access.py`."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime

from ledger_core.domain import limits
from ledger_core.domain.access import ApiKey, ApiKeyRecord, Scope, first_not_owned, owner_is_valid
from ledger_core.domain.currency import validate_custom_currency
from ledger_core.domain.ids import API_KEY_PREFIX, new_id
from ledger_core.domain.model import AccountFacts
from ledger_core.service_layer.clock import Clock, utc_now
from ledger_core.service_layer.errors import Failure
from ledger_core.service_layer.ports import UnitOfWorkFactory

SECRET_PREFIX = "lk_"  # noqa: S105 (a prefix that makes leaked keys easy to grep for)
secret_entropy_bytes = 32
# Keys listed per database read by `list_api_keys`.
api_key_page_size = 200


def hash_secret(secret: str) -> bytes:
    # The secret carries 256 random bits, so a fast hash is as safe as a slow one here.
    return hashlib.sha256(secret.encode()).digest()


def create_api_key(
    uow_factory: UnitOfWorkFactory,
    *,
    name: str,
    scope: Scope,
    owner: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[str, str]:
    """Create a key; return (key id, secret). The secret is shown once and never stored.

    `owner` names whose accounts the key may debit; by default the key is its own owner,
    so keys share accounts only when told to (a rotated key is given the old one's)."""
    if owner is not None and not owner_is_valid(owner):
        raise ValueError(f"an owner is 1 to {limits.api_key_owner_length_max} printable characters")
    secret = SECRET_PREFIX + secrets.token_urlsafe(secret_entropy_bytes)
    key_id = new_id(API_KEY_PREFIX)
    with uow_factory() as uow:
        uow.api_keys.add(
            id=key_id,
            name=name,
            scope=scope.value,
            key_hash=hash_secret(secret),
            owner=key_id if owner is None else owner,
            expires_at=expires_at,
        )
        uow.commit()
    return key_id, secret


def authenticate(uow_factory: UnitOfWorkFactory, secret: str) -> ApiKey | None:
    """The key of this secret if it is neither revoked nor expired, else None."""
    with uow_factory() as uow:
        return uow.api_keys.find_active(hash_secret(secret))


def revoke_api_key(uow_factory: UnitOfWorkFactory, key_id: str) -> Failure | None:
    """Revoke a key for good. API processes stop accepting it within their cache's TTL."""
    with uow_factory() as uow:
        if uow.api_keys.revoke(key_id):
            uow.commit()
            return None
        record = uow.api_keys.get(key_id)
    if record is None:
        return Failure("api_key_not_found", f"No API key {key_id!r}.")
    return Failure("api_key_revoked", f"{key_id} was revoked already, at {record.revoked_at}.")


def list_api_keys(uow_factory: UnitOfWorkFactory) -> Iterator[ApiKeyRecord]:
    """Every key, oldest first, a page per database read."""
    after_id: str | None = None
    while True:
        with uow_factory() as uow:
            page = uow.api_keys.list_page(after_id=after_id, limit=api_key_page_size)
        yield from page
        if len(page) < api_key_page_size:
            return
        after_id = page[-1].id


def not_owned(api_key: ApiKey, debited: list[AccountFacts], **extra: object) -> Failure | None:
    """Why this key may not make a movement that debits these accounts, or None."""
    account_id = first_not_owned(api_key, debited)
    if account_id is None:
        return None
    return Failure(
        "account_not_owned",
        f"This API key may not debit account {account_id}: it belongs to another owner.",
        {"account_id": account_id, **extra},
    )


class ApiKeyCache:
    """Answers of `authenticate`, remembered for `ttl_seconds` per secret, so that a request
    does not pay a database round trip to be let in. Revoking a key (or creating one)
    takes effect within `ttl_seconds`; a key is never remembered past its expiry. Unknown
    secrets are remembered too, so that a client retrying a bad key does not hammer the
    database; the size is bounded."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        *,
        ttl_seconds: float = limits.api_key_cache_ttl_seconds,
        size_max: int = limits.api_key_cache_size_max,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Clock = utc_now,
    ) -> None:
        self._uow_factory = uow_factory
        self._ttl_seconds = ttl_seconds
        self._size_max = size_max
        self._monotonic = monotonic
        self._clock = clock
        self._entries: dict[bytes, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()

    def authenticate(self, secret: str) -> ApiKey | None:
        key_hash = hash_secret(secret)
        now = self._monotonic()
        entry = self._entries.get(key_hash)
        if entry is not None and entry[0] > now:
            return entry[1]
        with self._uow_factory() as uow:
            found = uow.api_keys.find_active(key_hash)
        lifetime_seconds = self._ttl_seconds
        if found is not None and found.expires_at is not None:
            left_seconds = (found.expires_at - self._clock()).total_seconds()
            lifetime_seconds = min(lifetime_seconds, left_seconds)
        with self._lock:
            if len(self._entries) >= self._size_max:
                self._entries.clear()
            self._entries[key_hash] = (now + lifetime_seconds, found)
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
