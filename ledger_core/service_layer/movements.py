"""Use cases of the movements beyond a two-account transfer: N-entry transactions, payments
with cashback, holds (authorize, capture, void, expire), reversals, and reading any
movement as a transaction.

Each is accepted PENDING under its Idempotency-Key in one database transaction, and posted
by the same posting path as every transfer: nothing here moves money.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from ledger_core.domain import limits
from ledger_core.domain.access import ApiKey, Scope
from ledger_core.domain.ids import new_id
from ledger_core.domain.model import (
    AcceptError,
    AccountFacts,
    HoldState,
    HoldStatus,
    Leg,
    TransferKind,
)
from ledger_core.domain.movement_records import (
    EntryView,
    HoldRecord,
    PaymentRecord,
    TransactionRecord,
)
from ledger_core.domain.rules import (
    cashback_amount,
    check_cashback,
    check_hold_expiry,
    check_transaction,
    check_transfer,
    debited,
    posting_shard,
    reversal_legs,
)
from ledger_core.service_layer.accept import ACCEPT_ERROR_DETAILS, CACHE_NAMESPACE
from ledger_core.service_layer.access import not_owned
from ledger_core.service_layer.clock import Clock, utc_now
from ledger_core.service_layer.errors import Failure, Response
from ledger_core.service_layer.idempotency import KEY_REUSED, replay
from ledger_core.service_layer.ports import (
    IdempotencyCache,
    NewHold,
    NewPayment,
    NewTransfer,
    PendingWrite,
    UnitOfWork,
    UnitOfWorkFactory,
    WakePosting,
)
from ledger_core.service_layer.reads import (
    HOLD_NOT_FOUND,
    MOVEMENT_NOT_FOUND,
    PAYMENT_NOT_FOUND,
    TRANSFER_NOT_FOUND,
)

log = logging.getLogger(__name__)

TRANSACTION_PREFIX, PAYMENT_PREFIX, HOLD_PREFIX = "txn", "pay", "hold"
ACTION_PREFIX, REVERSAL_PREFIX = "tr", "rev"
# What a reversal can reverse: movements that posted entries.
REVERSIBLE_KINDS = frozenset(
    {
        TransferKind.DEPOSIT,
        TransferKind.WITHDRAWAL,
        TransferKind.TRANSFER,
        TransferKind.TRANSACTION,
        TransferKind.PAYMENT,
        TransferKind.CAPTURE,
        TransferKind.CASHBACK,
    }
)
LEGGED_KINDS = frozenset({TransferKind.TRANSACTION, TransferKind.PAYMENT, TransferKind.REVERSAL})


@dataclass(frozen=True, slots=True)
class ReverseOf:
    """What a reverse route names, and its answer for any other movement: a payment is
    not refunded through /v1/transfers, nor a transfer through /v1/payments. Within
    those kinds, what is not reversible is 409 `not_reversible`."""

    kinds: frozenset[TransferKind]
    not_found: Failure


ANY_MOVEMENT = ReverseOf(frozenset(TransferKind), MOVEMENT_NOT_FOUND)
PAYMENT_ONLY = ReverseOf(frozenset({TransferKind.PAYMENT}), PAYMENT_NOT_FOUND)
SOURCE_TO_DESTINATION = ReverseOf(frozenset(TransferKind) - LEGGED_KINDS, TRANSFER_NOT_FOUND)
CASHBACK_HOLD = Failure(
    "hold_is_cashback",
    "This hold is a payment's delayed cashback: it is paid when its delay has passed, or"
    " voided by a refund of the rest of the payment, never captured or voided by hand.",
)
ERROR_DETAILS = {
    **ACCEPT_ERROR_DETAILS,
    AcceptError.UNBALANCED: "The entries of each currency must sum to zero.",
    AcceptError.TOO_MANY_ENTRIES: (
        f"A transaction has 2 to {limits.transaction_entries_max} entries."
    ),
    AcceptError.OUT_OF_BOUNDS: (
        f"basis_points is 0 to {limits.basis_points_per_unit}, available_after_seconds 1 to"
        f" {limits.cashback_delay_seconds_max}, expires_in_seconds 1 to"
        f" {limits.hold_expires_in_seconds_max}."
    ),
}


@dataclass(frozen=True, slots=True)
class Keyed:
    """The key the request acts with, its Idempotency-Key and the fingerprint of its body."""

    api_key: ApiKey
    idempotency_key: str
    request_hash: str

    @property
    def api_key_id(self) -> str:
        # Idempotency-Keys are scoped to the API key, not to its owner.
        return self.api_key.id


def _failure(error: AcceptError, **extra: Any) -> Failure:
    return Failure(error.value, ERROR_DETAILS[error], extra)


def _wake(wake: WakePosting, shard: int) -> None:
    # Committed already: a wake-up that fails is covered by the sweeper.
    try:
        wake(shard)
    except Exception:
        log.exception("waking the posting workers failed; the sweeper will")


def _store(
    uow: UnitOfWork,
    keyed: Keyed,
    head: NewTransfer,
    *,
    members: Sequence[NewTransfer] = (),
) -> datetime | Response | Failure:
    """Store a movement (and the members of its atomic group) under the request's key:
    its creation time, or the replay of what the key created before."""
    writes = [PendingWrite(head, keyed.api_key_id, keyed.idempotency_key, keyed.request_hash)]
    writes += [PendingWrite(m, keyed.api_key_id, None, None) for m in members]
    stored = uow.transfers.add_pending(writes)
    if head.id in stored:
        created_at = stored[head.id].created_at
        assert created_at is not None, "a stored movement has its creation time"
        return created_at
    earlier = _earlier(uow, keyed)
    assert earlier is not None, "the key that conflicted has its movement"
    return earlier


def _earlier(uow: UnitOfWork, keyed: Keyed) -> Response | Failure | None:
    """The replay of what this key created before (KEY_REUSED for another body), or None
    if the key is new."""
    key = (keyed.api_key_id, keyed.idempotency_key)
    before = uow.transfers.by_idempotency_keys([key]).get(key)
    if before is None:
        return None
    if before.request_hash != keyed.request_hash:
        return KEY_REUSED
    return Response(202, _replayed(uow, before.record.id), replayed=True)


def _replayed(uow: UnitOfWork, movement_id: str) -> dict[str, Any]:
    """What the first request with this key answered: its resource as it was accepted."""
    if movement_id.startswith(PAYMENT_PREFIX + "_"):
        payment = uow.payments.get(movement_id)
        assert payment is not None
        return payment.as_accepted().to_json()
    if movement_id.startswith(HOLD_PREFIX + "_"):
        hold = uow.holds.get(movement_id)
        assert hold is not None
        return hold.as_accepted().to_json()
    movement = uow.transfers.get_movement(movement_id)
    assert movement is not None
    return movement.as_accepted().to_json()


def _cached(cache: IdempotencyCache, keyed: Keyed) -> Response | Failure | None:
    stored = cache.get(keyed.api_key_id, CACHE_NAMESPACE + keyed.idempotency_key)
    return None if stored is None else replay(stored, keyed.request_hash)


def _remember(cache: IdempotencyCache, keyed: Keyed, response: Response) -> None:
    cache.put(
        keyed.api_key_id,
        CACHE_NAMESPACE + keyed.idempotency_key,
        (keyed.request_hash, response.status_code, response.body),
        ttl_seconds=limits.idempotency_ttl_seconds,
    )


def _views(legs: Sequence[Leg], facts: dict[str, AccountFacts]) -> list[EntryView]:
    return [EntryView(leg.account_id, leg.amount, facts[leg.account_id].currency) for leg in legs]


def _as_accepted(
    movement: NewTransfer, facts: dict[str, AccountFacts], created_at: datetime
) -> TransactionRecord:
    """A legged movement as it was just accepted, from what was stored: no read back."""
    return TransactionRecord(
        id=movement.id,
        kind=movement.kind,
        status="pending",
        rejection_reason=None,
        entries=_views(movement.legs, facts),
        amount=movement.amount,
        currency=movement.currency,
        description=movement.description,
        metadata=movement.metadata,
        effective_at=movement.effective_at,
        created_at=created_at,
        posted_at=None,
        reverses_id=movement.reverses_id,
    )


def _accepted(
    cache: IdempotencyCache,
    keyed: Keyed,
    wake: WakePosting,
    movement: TransactionRecord | HoldRecord | PaymentRecord,
    shard: int,
) -> Response:
    """202 with the movement as accepted, remembered under the key, posting woken."""
    response = Response(202, movement.to_json())
    _remember(cache, keyed, response)
    _wake(wake, shard)
    return response


def _currency(legs: Sequence[Leg], facts: dict[str, AccountFacts]) -> str | None:
    currencies = {facts[leg.account_id].currency for leg in legs}
    return currencies.pop() if len(currencies) == 1 else None


def _first_debited(legs: Sequence[Leg]) -> str:
    return next(leg.account_id for leg in legs if leg.amount < 0)


def _debited_accounts(legs: Sequence[Leg], facts: dict[str, AccountFacts]) -> list[AccountFacts]:
    """Every account the legs take money from on the whole, in order of first leg: the
    refund of a payment with cashback takes the cashback back from a customer it refunds
    more, and that customer is not debited."""
    net: dict[str, int] = {}
    for leg in legs:
        net[leg.account_id] = net.get(leg.account_id, 0) + leg.amount
    return [facts[account_id] for account_id, amount in net.items() if amount < 0]


# ----------------------------------------------------------------------------- transactions


def accept_transaction(
    uow_factory: UnitOfWorkFactory,
    cache: IdempotencyCache,
    wake: WakePosting,
    *,
    keyed: Keyed,
    legs: Sequence[Leg],
    description: str | None,
    metadata: dict[str, str],
    effective_at: datetime | None,
    shards: int = 1,
) -> Response | Failure:
    """A PENDING transaction of 2 to `transaction_entries_max` signed entries, each
    currency's summing to zero; posted all or nothing, every debit checked."""
    cached = _cached(cache, keyed)
    if cached is not None:
        return cached
    with uow_factory() as uow:
        facts = uow.accounts.facts({leg.account_id for leg in legs})
        error = check_transaction(legs, facts)
        if error is not None:
            return _failure(error)
        refused = not_owned(keyed.api_key, _debited_accounts(legs, facts))
        if refused is not None:
            return refused
        transfer = NewTransfer(
            id=new_id(TRANSACTION_PREFIX),
            kind=TransferKind.TRANSACTION.value,
            source_account_id=None,
            destination_account_id=None,
            amount=debited(legs),
            currency=_currency(legs, facts),
            description=description,
            metadata=metadata,
            shard=posting_shard(_first_debited(legs), shards),
            legs=tuple(legs),
            effective_at=effective_at,
        )
        stored = _store(uow, keyed, transfer)
        if not isinstance(stored, datetime):
            return stored
        uow.commit()
    return _accepted(cache, keyed, wake, _as_accepted(transfer, facts, stored), transfer.shard)


# ----------------------------------------------------------------------------- payments


@dataclass(frozen=True, slots=True)
class CashbackRequest:
    rewards_account_id: str
    basis_points: int
    # Held on the rewards account until then, posted to the customer by beat.
    available_after_seconds: int | None = None


def accept_payment(
    uow_factory: UnitOfWorkFactory,
    cache: IdempotencyCache,
    wake: WakePosting,
    *,
    keyed: Keyed,
    customer_account_id: str,
    merchant_account_id: str,
    amount: int,
    cashback: CashbackRequest | None,
    description: str | None,
    metadata: dict[str, str],
    shards: int = 1,
    clock: Clock = utc_now,
) -> Response | Failure:
    """Customer to merchant for `amount`, and rewards to customer for the cashback
    (`cashback_amount`, rounded down), in one atomic posting. A delayed cashback is a hold
    on the rewards account, posted together with the payment (or rejected with it) and
    captured by beat when its delay has passed."""
    cached = _cached(cache, keyed)
    if cached is not None:
        return cached
    accounts = {customer_account_id, merchant_account_id}
    if cashback is not None:
        accounts.add(cashback.rewards_account_id)
    with uow_factory() as uow:
        facts = uow.accounts.facts(accounts)
        customer, merchant = facts.get(customer_account_id), facts.get(merchant_account_id)
        error = check_transfer(TransferKind.TRANSFER, customer, merchant, amount)
        rewards = facts.get(cashback.rewards_account_id) if cashback is not None else None
        if error is None and cashback is not None:
            error = check_transfer(TransferKind.TRANSFER, rewards, customer, 1) or check_cashback(
                cashback.basis_points, cashback.available_after_seconds
            )
        if error is not None:
            return _failure(error)
        assert customer is not None and merchant is not None
        # The customer pays; the rewards account pays the cashback (or holds it, delayed).
        refused = not_owned(keyed.api_key, [customer] if rewards is None else [customer, rewards])
        if refused is not None:
            return refused
        cash = 0 if cashback is None else cashback_amount(amount, cashback.basis_points)
        delayed = cashback is not None and bool(cashback.available_after_seconds) and cash > 0
        payment_id = new_id(PAYMENT_PREFIX)
        legs = [Leg(customer_account_id, -amount), Leg(merchant_account_id, amount)]
        if cashback is not None and cash and not delayed:
            legs += [Leg(cashback.rewards_account_id, -cash), Leg(customer_account_id, cash)]
        shard = posting_shard(customer_account_id, shards)
        group_id = payment_id if delayed else None
        payment = NewTransfer(
            id=payment_id,
            kind=TransferKind.PAYMENT.value,
            source_account_id=None,
            destination_account_id=None,
            amount=amount,
            currency=customer.currency,
            description=description,
            metadata=metadata,
            shard=shard,
            group_id=group_id,
            legs=tuple(legs),
        )
        members: list[NewTransfer] = []
        hold: NewHold | None = None
        if delayed:
            assert cashback is not None and cashback.available_after_seconds is not None
            hold_id = new_id(HOLD_PREFIX)
            members.append(
                NewTransfer(
                    id=hold_id,
                    kind=TransferKind.HOLD.value,
                    source_account_id=cashback.rewards_account_id,
                    destination_account_id=customer_account_id,
                    amount=cash,
                    currency=customer.currency,
                    description=f"cashback of {payment_id}",
                    metadata={},
                    shard=shard,
                    group_id=group_id,
                )
            )
            hold = NewHold(
                id=hold_id,
                source_account_id=cashback.rewards_account_id,
                destination_account_id=customer_account_id,
                amount=cash,
                currency=customer.currency,
                expires_at=None,
                capture_at=clock() + timedelta(seconds=cashback.available_after_seconds),
            )
        stored = _store(uow, keyed, payment, members=members)
        if not isinstance(stored, datetime):
            return stored
        if hold is not None:
            uow.holds.add(hold)
        uow.payments.add(
            NewPayment(
                id=payment_id,
                customer_account_id=customer_account_id,
                merchant_account_id=merchant_account_id,
                amount=amount,
                rewards_account_id=None if cashback is None else cashback.rewards_account_id,
                basis_points=None if cashback is None else cashback.basis_points,
                cashback_amount=cash,
                cashback_hold_id=None if hold is None else hold.id,
            )
        )
        record = uow.payments.get(payment_id)
        assert record is not None, "a payment stored in this transaction reads back"
        uow.commit()
    return _accepted(cache, keyed, wake, record, shard)


# ----------------------------------------------------------------------------- holds


def accept_hold(
    uow_factory: UnitOfWorkFactory,
    cache: IdempotencyCache,
    wake: WakePosting,
    *,
    keyed: Keyed,
    source_account_id: str,
    destination_account_id: str,
    amount: int,
    expires_in_seconds: int | None,
    description: str | None,
    metadata: dict[str, str],
    shards: int = 1,
) -> Response | Failure:
    """Reserve `amount` of the source for the destination: posted as a hold that lowers
    the source's available balance and moves nothing, until captured, voided or expired."""
    cached = _cached(cache, keyed)
    if cached is not None:
        return cached
    with uow_factory() as uow:
        facts = uow.accounts.facts({source_account_id, destination_account_id})
        source, destination = facts.get(source_account_id), facts.get(destination_account_id)
        error = check_transfer(
            TransferKind.TRANSFER, source, destination, amount
        ) or check_hold_expiry(expires_in_seconds)
        if error is not None:
            return _failure(error)
        assert source is not None
        refused = not_owned(keyed.api_key, [source])
        if refused is not None:
            return refused
        hold_id = new_id(HOLD_PREFIX)
        transfer = NewTransfer(
            id=hold_id,
            kind=TransferKind.HOLD.value,
            source_account_id=source_account_id,
            destination_account_id=destination_account_id,
            amount=amount,
            currency=source.currency,
            description=description,
            metadata=metadata,
            shard=posting_shard(source_account_id, shards),
        )
        stored = _store(uow, keyed, transfer)
        if not isinstance(stored, datetime):
            return stored
        expires_at = (
            None if expires_in_seconds is None else stored + timedelta(seconds=expires_in_seconds)
        )
        uow.holds.add(
            NewHold(
                hold_id,
                source_account_id,
                destination_account_id,
                amount,
                source.currency,
                expires_at,
            )
        )
        record = uow.holds.get(hold_id)
        assert record is not None, "a hold stored in this transaction reads back"
        uow.commit()
    return _accepted(cache, keyed, wake, record, transfer.shard)


def act_on_hold(
    uow_factory: UnitOfWorkFactory,
    cache: IdempotencyCache,
    wake: WakePosting,
    *,
    keyed: Keyed,
    hold_id: str,
    kind: TransferKind,
    amount: int | None = None,
    shards: int = 1,
    clock: Clock = utc_now,
) -> Response | Failure:
    """Capture (all of a hold or part of it; the rest is released) or void an active hold.

    One right to act on a hold is claimed in PostgreSQL with the movement that acts: of a
    capture and a void (or an expiry) that race, one gets it, and the other is refused
    here (409 `hold_not_active`) or, if it came through, rejected by the posting."""
    assert kind in (TransferKind.CAPTURE, TransferKind.VOID)
    cached = _cached(cache, keyed)
    if cached is not None:
        return cached
    with uow_factory() as uow:
        hold = uow.holds.get(hold_id)
        refused = _may_not_act(uow, keyed.api_key, hold)
        if refused is not None:
            return refused
        assert hold is not None
        moved = hold.amount if amount is None else amount
        if kind is TransferKind.CAPTURE and not 1 <= moved <= hold.amount:
            return Failure(
                "capture_exceeds_hold",
                f"A capture takes 1 to {hold.amount}, the amount held.",
            )
        action = NewTransfer(
            id=new_id(ACTION_PREFIX),
            kind=kind.value,
            source_account_id=hold.source_account_id,
            destination_account_id=hold.destination_account_id,
            amount=moved if kind is TransferKind.CAPTURE else hold.amount,
            currency=hold.currency,
            description=None,
            metadata={},
            shard=posting_shard(hold.source_account_id, shards),
            hold_id=hold_id,
        )
        stored = _store(uow, keyed, action)
        if not isinstance(stored, datetime):
            return stored
        if not uow.holds.claim_action(hold_id, action.id, unexpired_at=clock()):
            # Not committed: the action stored above goes with this transaction.
            return Failure("hold_not_active", _why_not_active(uow.holds.get(hold_id) or hold))
        movement = uow.transfers.get_movement(action.id)
        assert movement is not None, "an action stored in this transaction reads back"
        uow.commit()
    return _accepted(cache, keyed, wake, movement, action.shard)


def _may_not_act(uow: UnitOfWork, api_key: ApiKey, hold: HoldRecord | None) -> Failure | None:
    """A capture pays the destination from the reserved source, a void gives the source
    its funds back: a key that may debit either side of the hold may do either. Refused,
    the answer names the source. A payment's delayed cashback no key acts on: captured
    early, a refund could no longer void it; voided, the customer would lose what the
    payment promised. Beat and the payment's refund settle it."""
    if hold is None:
        return HOLD_NOT_FOUND
    if hold.capture_at is not None:
        return CASHBACK_HOLD
    if api_key.scope is Scope.ADMIN:
        return None  # no need for the accounts' facts
    facts = uow.accounts.facts({hold.source_account_id, hold.destination_account_id})
    if not_owned(api_key, [facts[hold.destination_account_id]]) is None:
        return None
    return not_owned(api_key, [facts[hold.source_account_id]])


def _why_not_active(hold: HoldRecord) -> str:
    if hold.status != HoldStatus.ACTIVE:
        return f"The hold is {hold.status}."
    if hold.action_id is not None:
        return "Another capture or void of the hold was accepted first."
    return "The hold is past its expiry."


def release_due_holds(
    uow_factory: UnitOfWorkFactory,
    wake: WakePosting,
    *,
    shards: int = 1,
    limit: int = limits.holds_due_batch_size_max,
    clock: Clock = utc_now,
) -> int:
    """Beat: expire the holds past their expiry, and capture the cashbacks whose delay has
    passed. Each claims its hold's one right to act, as a request would, so an expiry
    racing a capture leaves the hold captured or expired, never both."""
    with uow_factory() as uow:
        due = uow.holds.due(now=clock(), limit=limit)
        actions: list[NewTransfer] = []
        writes: list[PendingWrite] = []
        for hold, what, api_key_id in due:
            kind = TransferKind.CASHBACK if what == "cashback" else TransferKind.EXPIRE
            actions.append(
                NewTransfer(
                    id=new_id(ACTION_PREFIX),
                    kind=kind.value,
                    source_account_id=hold.source_account_id,
                    destination_account_id=hold.destination_account_id,
                    amount=hold.amount,
                    currency=hold.currency,
                    description=None,
                    metadata={},
                    shard=posting_shard(hold.source_account_id, shards),
                    hold_id=hold.id,
                )
            )
            writes.append(PendingWrite(actions[-1], api_key_id, None, None))
        if not actions:
            return 0
        uow.transfers.add_pending(writes)
        for action in actions:
            assert action.hold_id is not None
            claimed = uow.holds.claim_action(action.hold_id, action.id)
            assert claimed, "a due hold is locked by this transaction and has no action"
        uow.commit()
    for shard in sorted({a.shard for a in actions}):
        _wake(wake, shard)
    return len(actions)


# ----------------------------------------------------------------------------- reversals


def _reversible(original: TransactionRecord, amount: int | None) -> int | Failure:
    """How much this reversal takes back of `original`, or why it cannot."""
    if original.status != "posted" or TransferKind(original.kind) not in REVERSIBLE_KINDS:
        return Failure(
            "not_reversible",
            f"Only a posted movement can be reversed; this one is {original.status}"
            + ("." if original.kind in REVERSIBLE_KINDS else f" and a {original.kind}."),
        )
    left = original.amount - original.reversed_amount
    wanted = left if amount is None else amount
    if not 1 <= wanted <= left:
        return Failure(
            "reversal_exceeds_original",
            f"What is left to reverse of it is {left}.",
            {"reversible_amount": left},
        )
    if original.kind == TransferKind.TRANSACTION and wanted != original.amount:
        return Failure(
            "partial_reversal_not_allowed",
            "A transaction is reversed in whole: its entries have no single amount.",
        )
    return wanted


def _with_pending_reversals(
    uow: UnitOfWork, original: TransactionRecord
) -> tuple[TransactionRecord, HoldState | None]:
    """A posted original with what its pending reversals take back counted as reversed,
    read under its row lock, so concurrent reversals see one another: the one that takes
    the rest is known (and voids a delayed cashback), and none is accepted beyond the
    original. Also a payment's cashback hold, locked first: posting's order (holds, then
    originals). Only for a posted original: a pending payment's posting holds its own row
    and then takes its hold, the other way round."""
    assert original.status == "posted", "only a posted movement is reversed"
    hold: HoldState | None = None
    if original.kind == TransferKind.PAYMENT:
        payment = uow.payments.get(original.id)
        if payment is not None and payment.cashback_hold_id is not None:
            hold = uow.holds.lock([payment.cashback_hold_id]).get(payment.cashback_hold_id)
    locked = uow.transfers.lock_originals([original.id])[original.id]
    reversed_amount = locked.reversed_amount + uow.transfers.reversing(original.id)
    return replace(original, reversed_amount=reversed_amount), hold


def _void_pending_cashback(
    uow: UnitOfWork, original: TransactionRecord, hold: HoldState | None, reversal: NewTransfer
) -> NewTransfer | None:
    """The void of a payment's delayed cashback (`hold`, locked), when a reversal takes
    back the rest of the payment before that cashback was paid: posted with the reversal,
    all or nothing (rejected with it, the hold is given back and the cashback paid when
    due)."""
    if hold is None or reversal.reversal_amount != original.amount - original.reversed_amount:
        return None
    void = NewTransfer(
        id=new_id(ACTION_PREFIX),
        kind=TransferKind.VOID.value,
        source_account_id=hold.source_account_id,
        destination_account_id=hold.destination_account_id,
        amount=hold.amount,
        currency=original.currency,
        description=f"cashback of {original.id}, refunded",
        metadata={},
        shard=reversal.shard,
        group_id=reversal.group_id,
        hold_id=hold.id,
    )
    # The hold's one right to act, as a capture's: if beat paid the cashback already (or
    # is paying it), there is nothing to void. Not committed if the reversal is not.
    return void if uow.holds.claim_action(hold.id, void.id) else None


def reverse(
    uow_factory: UnitOfWorkFactory,
    cache: IdempotencyCache,
    wake: WakePosting,
    *,
    keyed: Keyed,
    original_id: str,
    amount: int | None,
    reason: str | None,
    of: ReverseOf = ANY_MOVEMENT,
    shards: int = 1,
) -> Response | Failure:
    """A new movement with the opposite entries of a posted one, in whole or in part
    (transactions in whole). Reversals never add up to more than the original: checked
    here, checked again by the posting under the original's lock, and by a constraint.
    Reversing the rest of a payment voids its delayed cashback if not paid yet. A movement
    of another kind than `of` names is `of.not_found`, as if it were not there."""
    cached = _cached(cache, keyed)
    if cached is not None:
        return cached
    with uow_factory() as uow:
        original = uow.transfers.get_movement(original_id)
        if original is None or TransferKind(original.kind) not in of.kinds:
            return of.not_found
        # Unlocked first: what it refuses (not posted, not reversible, too much) it refuses
        # under the lock too, as reversed amounts only grow.
        wanted = _reversible(original, amount)
        hold: HoldState | None = None
        if not isinstance(wanted, Failure):
            original, hold = _with_pending_reversals(uow, original)
            wanted = _reversible(original, amount)
        if isinstance(wanted, Failure):
            # What is left may be gone because this very request's reversal took it:
            # a retry (its cached answer expired) gets that reversal, not a refusal.
            return _earlier(uow, keyed) or wanted
        legs = reversal_legs(
            [Leg(e.account_id, e.amount) for e in original.entries],
            original.amount,
            wanted,
            original.reversed_amount,
        )
        facts = uow.accounts.facts({leg.account_id for leg in legs})
        # What the original credited: taking it back debits those accounts.
        refused = not_owned(keyed.api_key, _debited_accounts(legs, facts))
        if refused is not None:
            return refused
        reversal_id = new_id(REVERSAL_PREFIX)
        reversal = NewTransfer(
            id=reversal_id,
            kind=TransferKind.REVERSAL.value,
            source_account_id=None,
            destination_account_id=None,
            amount=debited(legs),
            currency=original.currency,
            description=reason,
            metadata={},
            shard=posting_shard(_first_debited(legs), shards),
            group_id=reversal_id,
            legs=tuple(legs),
            reverses_id=original_id,
            reversal_amount=wanted,
        )
        void = _void_pending_cashback(uow, original, hold, reversal)
        if void is None:
            reversal = replace(reversal, group_id=None)
        stored = _store(uow, keyed, reversal, members=[] if void is None else [void])
        if not isinstance(stored, datetime):
            return stored
        uow.commit()
    return _accepted(cache, keyed, wake, _as_accepted(reversal, facts, stored), reversal.shard)
