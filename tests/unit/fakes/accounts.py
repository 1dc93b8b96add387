"""`FakeAccounts`, as `ledger_core/adapters/sql_accounts.py`."""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from datetime import datetime

from ledger_core.domain.model import AccountFacts, AccountState
from ledger_core.domain.records import AccountRecord

from .base import _Repository
from .rows import AccountRow, State
from .schema import HOLD_ACTION_KINDS, _check_account, _json, _require


def _pending(s: State, account_id: str) -> tuple[int, int]:
    """(pending_in, pending_out) as RECORD_COLUMNS sums them: two-account movements by
    their accounts, except a hold's settlement or release (its money is held already),
    and the legs of the others."""
    pending_in = pending_out = 0
    for t in s.transfers.values():
        if t.status != "pending":
            continue
        if t.kind not in HOLD_ACTION_KINDS:
            pending_in += t.amount if t.destination_account_id == account_id else 0
            pending_out += t.amount if t.source_account_id == account_id else 0
        for leg in s.legs.get(t.id, ()):
            if leg.account_id == account_id:
                pending_in += max(leg.amount, 0)
                pending_out += max(-leg.amount, 0)
    return pending_in, pending_out


def _account_record(s: State, row: AccountRow) -> AccountRecord:
    pending_in, pending_out = _pending(s, row.id)
    return AccountRecord(
        id=row.id,
        currency=row.currency,
        name=row.name,
        metadata=copy.deepcopy(row.metadata),
        allow_overdraft=row.allow_overdraft,
        is_system=row.is_system,
        posted=row.balance,
        pending_in=pending_in,
        pending_out=pending_out,
        created_at=row.created_at,
        held_out=row.held_out,
        held_in=row.held_in,
    )


def _facts(row: AccountRow) -> AccountFacts:
    return AccountFacts(row.id, row.currency, row.allow_overdraft, row.is_system, row.owner)


class FakeAccounts(_Repository):
    table = "accounts"

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
        s = self._statement("add")
        _require(id not in s.accounts, "pk_accounts")
        row = AccountRow(
            id, currency, name, _json(metadata), allow_overdraft, False, 0, self._now, owner=owner
        )
        _check_account(s, row)
        self._uow.wrote()
        s.accounts[id] = row

    def ensure_system_account(self, currency: str, id: str) -> None:
        self._statement("ensure_system_account")

        def exists(state: State) -> bool:
            return any(a.is_system and a.currency == currency for a in state.accounts.values())

        # ON CONFLICT (currency) WHERE is_system DO NOTHING: only that index may conflict.
        if not self._uow.insert_unique(("accounts.system", currency), exists):
            return
        s = self._s
        _require(id not in s.accounts, "pk_accounts")
        row = AccountRow(id, currency, f"{currency} system account", {}, True, True, 0, self._now)
        self._uow.wrote()
        s.accounts[id] = row

    def get(self, account_id: str) -> AccountRecord | None:
        s = self._statement("get")
        row = s.accounts.get(account_id)
        return None if row is None else _account_record(s, row)

    def list_page(self, *, after_id: str | None, limit: int) -> list[AccountRecord]:
        s = self._statement("list_page")
        rows = sorted(s.accounts.values(), key=lambda a: a.id)
        if after_id is not None:
            rows = [a for a in rows if a.id > after_id]
        return [_account_record(s, a) for a in rows[:limit]]

    def facts(self, account_ids: Collection[str]) -> dict[str, AccountFacts]:
        s = self._statement("facts")
        return {i: _facts(s.accounts[i]) for i in account_ids if i in s.accounts}

    def system_facts(self, currency: str) -> AccountFacts | None:
        s = self._statement("system_facts")
        for row in s.accounts.values():
            if row.is_system and row.currency == currency:
                return _facts(row)
        return None

    def lock(self, account_ids: Collection[str]) -> dict[str, AccountState]:
        # FOR NO KEY UPDATE in ascending id order: a holder makes this wait.
        ids = sorted(set(account_ids))
        existing = [i for i in ids if i in self._statement("lock").accounts]
        for account_id in existing:
            self._uow.lock_row("accounts", account_id)
        s = self._s
        return {
            i: AccountState(
                i,
                s.accounts[i].currency,
                s.accounts[i].balance,
                s.accounts[i].allow_overdraft,
                s.accounts[i].is_system,
                s.accounts[i].held_out,
                s.accounts[i].held_in,
            )
            for i in existing
            if i in s.accounts
        }

    def set_balances(
        self, balances: Mapping[str, int], held: Mapping[str, tuple[int, int]] | None = None
    ) -> None:
        held = held or {}
        s = self._statement("set_balances")
        existing = [i for i in dict.fromkeys([*balances, *held]) if i in s.accounts]
        for account_id in existing:
            self._uow.lock_row("accounts", account_id)
        s = self._s
        self._uow.wrote()
        for account_id in existing:
            # An UPDATE that matches no row changes nothing; one row gets its balance and
            # its holds at once, so its checks see both (SET_BALANCES_AND_HELD).
            row = s.accounts[account_id]
            row.balance = balances.get(account_id, row.balance)
            row.held_out, row.held_in = held.get(account_id, (row.held_out, row.held_in))
            _check_account(s, row)

    def balance_as_of(self, account_id: str, moment: datetime) -> int:
        s = self._statement("balance_as_of")
        # BALANCE_AS_OF: the last entry at or before the moment, by (created_at, id).
        before = [e for e in s.entries if e.account_id == account_id and e.created_at <= moment]
        if not before:
            return 0
        return max(before, key=lambda e: (e.created_at, e.id)).balance_after
