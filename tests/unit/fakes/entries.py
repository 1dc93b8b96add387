"""`FakeEntries`: the posted entries of the books."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from ledger_core.domain.model import Outcome, Posted
from ledger_core.domain.records import EntryRecord

from .base import _Repository
from .schema import (
    INT64_MAX,
    INT64_MIN,
    NUMERIC_39_MAX,
    SMALLINT_MAX,
    SMALLINT_MIN,
    _in_range,
    _require,
)


class FakeEntries(_Repository):
    table = "entries"

    def add_posted(self, outcomes: Sequence[Outcome]) -> None:
        s = self._statement("add_posted")
        for outcome in outcomes:
            poison = self._store.poisoned.get(outcome.transfer_id)
            if poison is not None:
                raise poison
        entries = [e for o in outcomes if isinstance(o, Posted) for e in o.entries]
        if not entries:
            return
        self._uow.wrote()
        seen = {(e.transfer_id, s.entry_legs[e.id]) for e in s.entries}
        sums: dict[tuple[str, str], int] = {}
        for entry in entries:
            _require(_in_range(entry.amount, INT64_MIN, INT64_MAX), "entries.amount bigint")
            _require(entry.amount != 0, "ck_entries_amount_nonzero")
            _require(
                _in_range(entry.balance_after, -NUMERIC_39_MAX, NUMERIC_39_MAX),
                "entries.balance_after numeric",
            )
            _require(entry.transfer_id in s.transfers, "fk_entries_transfer_id_transfers")
            _require(entry.account_id in s.accounts, "fk_entries_account_id_accounts")
            _require(_in_range(entry.leg, SMALLINT_MIN, SMALLINT_MAX), "entries.leg smallint")
            pair = (entry.transfer_id, entry.leg)
            _require(pair not in seen, "uq_entries_transfer_id_leg")
            seen.add(pair)
            currency = (entry.transfer_id, s.accounts[entry.account_id].currency)
            sums[currency] = sums.get(currency, 0) + entry.amount
            entry_id = self._store.next_entry_id
            self._store.next_entry_id += 1
            # created_at is clock_timestamp() of the insert: the store's clock.
            s.entries.append(
                EntryRecord(
                    entry_id,
                    entry.transfer_id,
                    entry.account_id,
                    entry.amount,
                    entry.balance_after,
                    self._store.now(),
                )
            )
            s.entry_legs[entry_id] = entry.leg
        # The statement trigger entries_refer_and_balance (migration 0004).
        _require(not any(sums.values()), "entries_refer_and_balance: a currency does not sum to 0")

    def list_page(
        self,
        account_id: str,
        *,
        after_id: int | None,
        limit: int,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> list[EntryRecord]:
        s = self._statement("list_page")
        # ENTRIES_PAGE: an id cursor, an open time window, ORDER BY id.
        rows = [
            e
            for e in s.entries
            if e.account_id == account_id
            and (after_id is None or e.id > after_id)
            and (created_after is None or e.created_at > created_after)
            and (created_before is None or e.created_at < created_before)
        ]
        rows.sort(key=lambda e: e.id)
        return rows[:limit]
