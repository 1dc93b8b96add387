"""Who may do what: the scopes of API keys, the key a request acts as, and whose money that
key may move. Pure rules; keys are stored and checked by `service_layer/access.py`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from ledger_core.domain import limits
from ledger_core.domain.model import AccountFacts


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


# Each scope includes the ones below it.
SCOPE_RANK = {Scope.READ: 0, Scope.WRITE: 1, Scope.ADMIN: 2}


def scope_allows(granted: str, required: Scope) -> bool:
    return SCOPE_RANK[Scope(granted)] >= SCOPE_RANK[required]


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An active API key, as a request acts with it. `owner` names whose accounts it may
    debit: the accounts it (or another key of the same owner) opened."""

    id: str
    scope: Scope
    owner: str
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """What an operator sees of a key: everything but its secret, which is never stored."""

    id: str
    name: str
    scope: str
    owner: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


def may_debit(key_scope: Scope, key_owner: str, account_owner: str | None) -> bool:
    """Whether a key may take money from an account. An account without an owner (opened
    before owners existed) is debited by admin keys only."""
    if key_scope is Scope.ADMIN:
        return True
    if key_scope is Scope.WRITE:
        return account_owner is not None and account_owner == key_owner
    return False


def first_not_owned(key: ApiKey, debited: Iterable[AccountFacts]) -> str | None:
    """The first of the accounts a movement debits that the key may not debit, or None.

    A system account is skipped: it is debited only by deposits (and the reversal of a
    withdrawal), which bring money into a client account, and any write key may do that."""
    if key.scope is Scope.ADMIN:
        return None
    for account in debited:
        if not account.is_system and not may_debit(key.scope, key.owner, account.owner):
            return account.id
    return None


def owner_is_valid(owner: str) -> bool:
    """An owner is a name (a customer id, a team): printable, 1 to the limit's length."""
    return 1 <= len(owner) <= limits.api_key_owner_length_max and owner.isprintable()
