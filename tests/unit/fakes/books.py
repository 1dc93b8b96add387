"""`FakeBooks`: the reconciliation checks of `books_checks.py`."""

from __future__ import annotations

from datetime import timedelta

from ledger_core.domain.model import HoldStatus
from ledger_core.domain.records import EntryRecord
from ledger_core.service_layer.ports import Violations

from .base import _Repository
from .rows import AccountRow, State, TransferRow
from .schema import LEGGED_KINDS, RESERVING_KINDS, RETRYABLE_DELIVERIES


def _seconds_bigint(delta: timedelta) -> int:
    # extract(epoch ...)::bigint rounds half away from zero.
    seconds = delta.total_seconds()
    return int(seconds + 0.5) if seconds >= 0 else -int(-seconds + 0.5)


class FakeBooks(_Repository):
    """books_checks.CHECKS, rule by rule, read from one copy (one snapshot)."""

    table = "books"

    def violations(
        self, *, pending_age_max_seconds: float, delivery_overdue_max_seconds: float
    ) -> Violations:
        s = self._statement("violations")
        now = self._now
        by_account: dict[str, list[EntryRecord]] = {}
        for e in s.entries:
            by_account.setdefault(e.account_id, []).append(e)
        accounts = sorted(s.accounts.values(), key=lambda a: a.id)
        transfers = sorted(s.transfers.values(), key=lambda t: t.id)

        def total(account_id: str) -> int:
            return sum(e.amount for e in by_account.get(account_id, []))

        overdue_before = now - timedelta(seconds=delivery_overdue_max_seconds)
        reversals = _posted_reversals(s)
        return {
            "transfer_entries_do_not_sum_to_zero": _unbalanced_movements(s),
            "posted_movement_with_wrong_entry_count": _wrong_entry_counts(s, transfers),
            "entry_differs_from_its_leg": _entries_unlike_legs(s),
            "currency_entries_do_not_sum_to_zero": [
                (currency, amount)
                for currency, amount in sorted(_sums_by_currency(s).items())
                if amount
            ],
            "balance_differs_from_entries": [
                (a.id, a.balance - total(a.id)) for a in accounts if a.balance != total(a.id)
            ],
            "balance_differs_from_last_balance_after": [
                (a.id, a.balance - last.balance_after)
                for a in accounts
                if a.id in by_account
                for last in (max(by_account[a.id], key=lambda e: e.id),)
                if a.balance != last.balance_after
            ],
            "negative_balance_without_overdraft": [
                (a.id, a.balance) for a in accounts if a.balance < 0 and not a.allow_overdraft
            ],
            "available_negative_without_overdraft": [
                (a.id, a.balance - a.held_out)
                for a in accounts
                if a.balance - a.held_out < 0 and not a.allow_overdraft
            ],
            "held_differs_from_active_holds": _held_unlike_holds(s, accounts),
            "hold_differs_from_its_actions": _holds_unlike_actions(s),
            "reversed_amount_differs_from_reversals": [
                (t.id, t.reversed_amount - reversed)
                for t in transfers
                for reversed in (reversals.get(t.id, 0),)
                if t.reversed_amount != reversed
            ],
            "reversals_exceed_original": [
                (original_id, reversed - s.transfers[original_id].amount)
                for original_id, reversed in sorted(reversals.items())
                if original_id in s.transfers and reversed > s.transfers[original_id].amount
            ],
            "transfer_pending_too_long": [
                (t.id, _seconds_bigint(now - t.created_at))
                for t in transfers
                if t.status == "pending"
                and t.created_at < now - timedelta(seconds=pending_age_max_seconds)
            ],
            "transfer_quarantined": [
                (t.id, t.posting_attempts) for t in transfers if t.status == "quarantined"
            ],
            "webhook_delivery_overdue": [
                (d.id, _seconds_bigint(now - d.next_attempt_at))
                for d in sorted(s.deliveries.values(), key=lambda d: d.id)
                if d.status in RETRYABLE_DELIVERIES
                and d.next_attempt_at is not None
                and d.next_attempt_at < overdue_before
            ],
        }


def _sums_by_currency(s: State) -> dict[str, int]:
    sums: dict[str, int] = {}
    for e in s.entries:
        currency = s.accounts[e.account_id].currency
        sums[currency] = sums.get(currency, 0) + e.amount
    return sums


def _unbalanced_movements(s: State) -> list[tuple[str, int]]:
    # Per movement and currency: a transaction may move two, each balanced on its own.
    sums: dict[tuple[str, str], int] = {}
    for e in s.entries:
        key = (e.transfer_id, s.accounts[e.account_id].currency)
        sums[key] = sums.get(key, 0) + e.amount
    return [(transfer_id, total) for (transfer_id, _), total in sorted(sums.items()) if total]


def _wrong_entry_counts(s: State, transfers: list[TransferRow]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for e in s.entries:
        counts[e.transfer_id] = counts.get(e.transfer_id, 0) + 1
    wrong: list[tuple[str, int]] = []
    for t in transfers:
        if t.status != "posted" or t.kind in RESERVING_KINDS:
            expected = 0
        elif t.kind in LEGGED_KINDS:
            expected = len(s.legs.get(t.id, ()))
        else:
            expected = 2
        if counts.get(t.id, 0) != expected:
            wrong.append((t.id, counts.get(t.id, 0)))
    return wrong


def _entries_unlike_legs(s: State) -> list[tuple[str, int]]:
    by_leg = {(e.transfer_id, s.entry_legs[e.id]): e for e in s.entries}
    return [
        (f"{transfer_id} leg {index}", entry.amount - leg.amount)
        for transfer_id, legs in sorted(s.legs.items())
        for index, leg in enumerate(legs)
        for entry in (by_leg.get((transfer_id, index)),)
        if entry is not None and (entry.account_id != leg.account_id or entry.amount != leg.amount)
    ]


def _held_unlike_holds(s: State, accounts: list[AccountRow]) -> list[tuple[str, int]]:
    active = [h for h in s.holds.values() if h.status == HoldStatus.ACTIVE.value]
    wrong: list[tuple[str, int]] = []
    for a in accounts:
        out = sum(h.amount for h in active if h.source_account_id == a.id)
        in_ = sum(h.amount for h in active if h.destination_account_id == a.id)
        wrong += [(f"{a.id} held_out", a.held_out - out)] if a.held_out != out else []
        wrong += [(f"{a.id} held_in", a.held_in - in_)] if a.held_in != in_ else []
    return wrong


def _holds_unlike_actions(s: State) -> list[tuple[str, int]]:
    # A hold is settled or released by exactly one posted action; its status says which,
    # and what was captured is what that action moved.
    settled = (HoldStatus.CAPTURED.value, HoldStatus.VOIDED.value, HoldStatus.EXPIRED.value)
    wrong: list[tuple[str, int]] = []
    for h in sorted(s.holds.values(), key=lambda h: h.id):
        own = s.transfers.get(h.id)
        if own is None:  # JOIN transfers
            continue
        actions = [t for t in s.transfers.values() if t.hold_id == h.id and t.status == "posted"]
        moved = sum(t.amount for t in actions if t.kind in ("capture", "cashback"))
        if (
            len(actions) != (1 if h.status in settled else 0)
            or h.captured_amount != moved
            or (h.status == HoldStatus.REJECTED.value) != (own.status == "rejected")
            or (h.status == HoldStatus.PENDING.value) != (own.status in ("pending", "quarantined"))
        ):
            wrong.append((h.id, len(actions)))
    return wrong


def _posted_reversals(s: State) -> dict[str, int]:
    reversed_by: dict[str, int] = {}
    for t in s.transfers.values():
        if t.kind == "reversal" and t.status == "posted" and t.reverses_id is not None:
            reversed_by[t.reverses_id] = reversed_by.get(t.reverses_id, 0) + (
                t.reversal_amount or 0
            )
    return reversed_by
