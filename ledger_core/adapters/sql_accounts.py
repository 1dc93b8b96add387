"""PostgreSQL repository of accounts, with a per-process cache of what never changes."""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from ledger_core.adapters.sql_connection import LazyConnection
from ledger_core.domain.model import AccountFacts, AccountState
from ledger_core.domain.records import AccountRecord

# Facts are a few hundred bytes each: a full cache costs tens of MB per process, and when
# it fills up it is simply emptied.
account_facts_cache_size_max = 100_000

ADD = """
    INSERT INTO accounts (id, currency, name, metadata, allow_overdraft, owner)
    VALUES (%(id)s, %(currency)s, %(name)s, %(metadata)s, %(allow_overdraft)s, %(owner)s)
"""
# Concurrent callers agree: the partial unique index lets one system account per currency in.
ENSURE_SYSTEM = """
    INSERT INTO accounts (id, currency, name, allow_overdraft, is_system)
    VALUES (%(id)s, %(currency)s, %(name)s, true, true)
    ON CONFLICT (currency) WHERE is_system DO NOTHING
"""
FACTS = """
    SELECT id, currency, allow_overdraft, is_system, owner FROM accounts
    WHERE id = ANY(%(ids)b::text[])
"""
SYSTEM_FACTS = """
    SELECT id, currency, allow_overdraft, is_system, owner FROM accounts
    WHERE currency = %(currency)s AND is_system
"""
# FOR NO KEY UPDATE rather than FOR UPDATE: posting changes balances, never keys, and the
# weaker lock lets the API keep inserting transfers that reference these accounts (their
# foreign keys take FOR KEY SHARE, which FOR UPDATE would block).
LOCK = """
    SELECT id, currency, balance, allow_overdraft, is_system, held_out, held_in FROM accounts
    WHERE id = ANY(%(ids)b::text[]) ORDER BY id FOR NO KEY UPDATE
"""
# Balances and held amounts in one statement: the no-overdraft check (balance - held_out
# >= 0) holds between them at the end of a batch, not necessarily after one and before
# the other (a capture lowers both).
SET_BALANCES_AND_HELD = """
    UPDATE accounts AS a
    SET balance = coalesce(v.balance, a.balance), held_out = coalesce(v.held_out, a.held_out),
        held_in = coalesce(v.held_in, a.held_in)
    FROM unnest(%(ids)b::text[], %(balances)b::numeric[], %(out)b::numeric[],
                %(in)b::numeric[]) AS v(id, balance, held_out, held_in)
    WHERE a.id = v.id
"""
# One index probe (entries' (account_id, created_at)): cost flat as the ledger grows.
BALANCE_AS_OF = """
    SELECT balance_after FROM entries
    WHERE account_id = %(id)s AND created_at <= %(moment)s
    ORDER BY created_at DESC, id DESC LIMIT 1
"""
SET_BALANCES = """
    UPDATE accounts AS a SET balance = v.balance
    FROM unnest(%(ids)b::text[], %(balances)b::numeric[]) AS v(id, balance)
    WHERE a.id = v.id
"""
# Pending: two-account movements by their accounts, transactions, payments and reversals
# by their pending legs (partial indexes on pending rows only, so the cost is that of what
# is in flight, not of the account's history). A pending capture, cashback, void or expiry
# is left out: its money is counted already, in held_out/held_in.
RECORD_COLUMNS = """
    a.id, a.currency, a.name, a.metadata, a.allow_overdraft, a.is_system, a.balance,
    a.created_at, a.held_out, a.held_in,
    coalesce((SELECT sum(p.amount) FROM transfers p
              WHERE p.destination_account_id = a.id AND p.status = 'pending'
                AND p.kind NOT IN ('capture', 'cashback', 'void', 'expire')), 0)
    + coalesce((SELECT sum(l.amount) FROM transfer_legs l
                WHERE l.account_id = a.id AND l.pending AND l.amount > 0), 0) AS pending_in,
    coalesce((SELECT sum(p.amount) FROM transfers p
              WHERE p.source_account_id = a.id AND p.status = 'pending'
                AND p.kind NOT IN ('capture', 'cashback', 'void', 'expire')), 0)
    - coalesce((SELECT sum(l.amount) FROM transfer_legs l
                WHERE l.account_id = a.id AND l.pending AND l.amount < 0), 0) AS pending_out
"""
GET = f"SELECT {RECORD_COLUMNS} FROM accounts a WHERE a.id = %(id)s"
FIRST_PAGE = f"SELECT {RECORD_COLUMNS} FROM accounts a ORDER BY a.id LIMIT %(limit)s"
NEXT_PAGE = (
    f"SELECT {RECORD_COLUMNS} FROM accounts a WHERE a.id > %(after)s ORDER BY a.id LIMIT %(limit)s"
)


class AccountFactsCache:
    """Currency, overdraft permission, system flag and owner of accounts, which never change
    once an account is open: the accept path reads them from here, not from PostgreSQL. Only
    accounts that exist are cached, so one opened a moment ago is never missed."""

    def __init__(self, size_max: int = account_facts_cache_size_max) -> None:
        self._size_max = size_max
        self._by_id: dict[str, AccountFacts] = {}
        self._system: dict[str, AccountFacts] = {}
        self._lock = threading.Lock()

    def get(self, account_id: str) -> AccountFacts | None:
        return self._by_id.get(account_id)

    def system(self, currency: str) -> AccountFacts | None:
        return self._system.get(currency)

    def remember(self, facts: Collection[AccountFacts]) -> None:
        with self._lock:
            if len(self._by_id) + len(facts) > self._size_max:
                self._by_id.clear()
            for fact in facts:
                self._by_id[fact.id] = fact
                if fact.is_system:
                    self._system[fact.currency] = fact


def _facts(row: Any) -> AccountFacts:
    return AccountFacts(row.id, row.currency, row.allow_overdraft, row.is_system, row.owner)


def _record(row: Any) -> AccountRecord:
    return AccountRecord(
        id=row.id,
        currency=row.currency,
        name=row.name,
        metadata=row.metadata,
        allow_overdraft=row.allow_overdraft,
        is_system=row.is_system,
        posted=int(row.balance),
        pending_in=int(row.pending_in),
        pending_out=int(row.pending_out),
        created_at=row.created_at,
        held_out=int(row.held_out),
        held_in=int(row.held_in),
    )


class SqlAccountRepository:
    def __init__(self, connection: LazyConnection, cache: AccountFactsCache) -> None:
        self._c = connection
        self._cache = cache

    def add(
        self,
        *,
        id: str,
        currency: str,
        name: str | None,
        metadata: dict[str, str],
        allow_overdraft: bool,
        owner: str | None,
    ) -> None:
        self._c.exec_driver_sql(
            ADD,
            {
                "id": id,
                "currency": currency,
                "name": name,
                "metadata": Jsonb(metadata),
                "allow_overdraft": allow_overdraft,
                "owner": owner,
            },
        )

    def ensure_system_account(self, currency: str, id: str) -> None:
        self._c.exec_driver_sql(
            ENSURE_SYSTEM, {"id": id, "currency": currency, "name": f"{currency} system account"}
        )

    def get(self, account_id: str) -> AccountRecord | None:
        row = self._c.exec_driver_sql(GET, {"id": account_id}).first()
        return None if row is None else _record(row)

    def list_page(self, *, after_id: str | None, limit: int) -> list[AccountRecord]:
        if after_id is None:
            rows = self._c.exec_driver_sql(FIRST_PAGE, {"limit": limit})
        else:
            rows = self._c.exec_driver_sql(NEXT_PAGE, {"after": after_id, "limit": limit})
        return [_record(row) for row in rows]

    def facts(self, account_ids: Collection[str]) -> dict[str, AccountFacts]:
        found: dict[str, AccountFacts] = {}
        missing: list[str] = []
        for account_id in account_ids:
            fact = self._cache.get(account_id)
            if fact is None:
                missing.append(account_id)
            else:
                found[account_id] = fact
        if missing:
            fetched = [_facts(row) for row in self._c.exec_driver_sql(FACTS, {"ids": missing})]
            self._cache.remember(fetched)
            found.update((fact.id, fact) for fact in fetched)
        return found

    def system_facts(self, currency: str) -> AccountFacts | None:
        cached = self._cache.system(currency)
        if cached is not None:
            return cached
        row = self._c.exec_driver_sql(SYSTEM_FACTS, {"currency": currency}).first()
        if row is None:
            return None
        fact = _facts(row)
        self._cache.remember([fact])
        return fact

    def lock(self, account_ids: Collection[str]) -> dict[str, AccountState]:
        rows = self._c.driver_rows(LOCK, {"ids": sorted(account_ids)})
        return {
            account_id: AccountState(
                account_id, currency, int(balance), overdraft, system, int(out), int(in_)
            )
            for account_id, currency, balance, overdraft, system, out, in_ in rows
        }

    def balance_as_of(self, account_id: str, moment: datetime) -> int:
        value = self._c.exec_driver_sql(
            BALANCE_AS_OF, {"id": account_id, "moment": moment}
        ).scalar()
        return 0 if value is None else int(value)

    def set_balances(
        self, balances: Mapping[str, int], held: Mapping[str, tuple[int, int]] | None = None
    ) -> None:
        if held:
            ids = sorted(balances.keys() | held.keys())
            self._c.exec_driver_sql(
                SET_BALANCES_AND_HELD,
                {
                    "ids": ids,
                    "balances": [balances.get(i) for i in ids],
                    "out": [held[i][0] if i in held else None for i in ids],
                    "in": [held[i][1] if i in held else None for i in ids],
                },
            )
        elif balances:  # a batch of plain transfers: the lighter statement
            self._c.exec_driver_sql(
                SET_BALANCES, {"ids": list(balances), "balances": list(balances.values())}
            )
