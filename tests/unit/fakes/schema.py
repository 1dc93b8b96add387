"""What the schema allows: column ranges, enumerations and constraints, checked on the rows
as PostgreSQL checks them (`ledger_core/adapters/tables.py`)."""

from __future__ import annotations

import json
from typing import Any

from ledger_core.domain import limits
from ledger_core.domain.model import (
    HOLD_RELEASING_KINDS,
    HOLD_SETTLING_KINDS,
    HoldStatus,
    TransferKind,
)
from ledger_core.domain.webhooks import DeliveryStatus

from .errors import FakeIntegrityError
from .rows import AccountRow, DeliveryRow, HoldRow, PaymentRow, State, TransferRow

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
SMALLINT_MIN, SMALLINT_MAX = -(2**15), 2**15 - 1
NUMERIC_39_MAX = 10**39 - 1  # numeric(39, 0)
IDEMPOTENCY_TTL_SECONDS = 24 * 60 * 60  # PUT_RESPONSE's %(ttl)s: limits.idempotency_ttl_seconds
TRANSFER_KINDS = tuple(kind.value for kind in TransferKind)
# Kinds whose entries are in transfer_legs (no source, no destination).
LEGGED_KINDS = ("transaction", "payment", "reversal")
# Kinds that settle or release a hold: their money is in held_out/held_in while pending.
HOLD_ACTION_KINDS = tuple(k.value for k in (*HOLD_SETTLING_KINDS, *HOLD_RELEASING_KINDS))
# What only reserves or releases funds: never an entry (sql_movements.RESERVING_KINDS).
RESERVING_KINDS = ("hold", "void", "expire")
HOLD_STATUSES = tuple(status.value for status in HoldStatus)
TRANSFER_STATUSES = ("pending", "posted", "rejected", "quarantined")
RETRYABLE_DELIVERIES = (DeliveryStatus.PENDING.value, DeliveryStatus.FAILED.value)
ENDPOINT_COLUMNS = frozenset(
    {
        "url",
        "events",
        "account_ids",
        "description",
        "status",
        "disabled_reason",
        "secret",
        "previous_secret",
        "previous_secret_expires_at",
        "last_success_at",
        "failing_since",
        "disabled_at",
        "deleted_at",
    }
)


def _json(value: Any) -> Any:
    # JSONB columns and Redis values hold JSON: anything else would not survive storage.
    return json.loads(json.dumps(value))


def _in_range(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _require(condition: bool, constraint: str) -> None:
    if not condition:
        raise FakeIntegrityError(constraint)


# ----------------------------------------------------------------------------- constraints


def _check_account(s: State, row: AccountRow) -> None:
    _require(_in_range(row.balance, -NUMERIC_39_MAX, NUMERIC_39_MAX), "accounts.balance numeric")
    for held in (row.held_out, row.held_in):
        _require(_in_range(held, 0, NUMERIC_39_MAX), "ck_accounts_held_nonnegative")
    _require(row.allow_overdraft or row.balance - row.held_out >= 0, "ck_accounts_no_overdraft")
    _require(not row.is_system or row.allow_overdraft, "ck_accounts_system_may_go_negative")
    if row.is_system:
        others = [
            a.id
            for a in s.accounts.values()
            if a.is_system and a.currency == row.currency and a.id != row.id
        ]
        _require(not others, "uq_accounts_system_currency")


def _check_transfer(s: State, t: TransferRow) -> None:
    _require(t.kind in TRANSFER_KINDS, "ck_transfers_kind_known")
    _require(t.status in TRANSFER_STATUSES, "ck_transfers_status_known")
    _require(_in_range(t.amount, 1, INT64_MAX), "ck_transfers_amount_positive (bigint)")
    _require(
        (t.kind in LEGGED_KINDS) == (t.source_account_id is None)
        and (t.source_account_id is None) == (t.destination_account_id is None),
        "ck_transfers_accounts_or_legs",
    )
    # A comparison with NULL is NULL, which a CHECK lets pass.
    _require(
        t.source_account_id is None or t.source_account_id != t.destination_account_id,
        "ck_transfers_distinct_accounts",
    )
    for account_id in (t.source_account_id, t.destination_account_id):
        _require(account_id is None or account_id in s.accounts, "fk_transfers_*_account_id")
    _require(_in_range(t.reversed_amount, 0, t.amount), "ck_transfers_reversed_within_amount")
    _require(
        (t.kind == "reversal") == (t.reverses_id is not None)
        and (t.kind == "reversal") == (t.reversal_amount is not None)
        and (t.reversal_amount is None or _in_range(t.reversal_amount, 1, INT64_MAX)),
        "ck_transfers_reversal_names_original",
    )
    _require(
        (t.kind in HOLD_ACTION_KINDS) == (t.hold_id is not None), "ck_transfers_action_names_hold"
    )
    _require(t.api_key_id in s.api_keys, "fk_transfers_api_key_id_api_keys")
    _require(t.batch_id is None or t.batch_id in s.batches, "fk_transfers_batch_id")
    _require(
        (t.status == "rejected") == (t.rejection_reason is not None),
        "ck_transfers_reason_iff_rejected",
    )
    _require((t.status == "posted") == (t.posted_at is not None), "ck_transfers_posted_at_iff")
    _require(
        (t.status in ("posted", "rejected")) == (t.finalized_at is not None),
        "ck_transfers_finalized_at_iff_final",
    )
    _require(
        t.status != "quarantined" or t.posting_error is not None,
        "ck_transfers_quarantined_has_error",
    )
    _require(_in_range(t.posting_attempts, 0, SMALLINT_MAX), "ck_transfers_posting_attempts")
    _require(_in_range(t.shard, SMALLINT_MIN, SMALLINT_MAX), "transfers.shard smallint")
    _require(
        (t.idempotency_key is None) == (t.request_hash is None),
        "ck_transfers_key_with_request_hash",
    )
    _require(
        t.idempotency_key is None or t.batch_id is None, "ck_transfers_key_on_transfer_or_batch"
    )


def _check_hold(s: State, row: HoldRow) -> None:
    _require(row.id in s.transfers, "fk_holds_id_transfers")
    _require(row.status in HOLD_STATUSES, "ck_holds_status_known")
    _require(_in_range(row.amount, 1, INT64_MAX), "ck_holds_amount_positive (bigint)")
    _require(_in_range(row.captured_amount, 0, row.amount), "ck_holds_captured_within_amount")


def _check_payment(s: State, row: PaymentRow) -> None:
    _require(row.id in s.transfers, "fk_payments_id_transfers")
    _require(_in_range(row.amount, 1, INT64_MAX), "payments.amount bigint")
    _require(
        row.basis_points is None or _in_range(row.basis_points, 0, limits.basis_points_per_unit),
        "ck_payments_basis_points_range",
    )
    _require(
        row.cashback_amount * limits.basis_points_per_unit <= row.amount * (row.basis_points or 0),
        "ck_payments_cashback_rounded_down",
    )


def _check_delivery(row: DeliveryRow) -> None:
    _require(
        row.status in (*RETRYABLE_DELIVERIES, "succeeded", "abandoned"),
        "ck_webhook_deliveries_status_known",
    )
    _require(row.attempts >= 0, "ck_webhook_deliveries_attempts_nonnegative")
