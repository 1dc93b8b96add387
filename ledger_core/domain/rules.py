"""Accept-time rules: what can be refused before anything is stored, with no lock and no
balance. Whether the money is there is decided later, by the posting rules."""

from __future__ import annotations

import zlib

from ledger_core.domain import limits
from ledger_core.domain.model import AcceptError, AccountFacts, TransferKind


def amount_is_valid(amount: object) -> bool:
    # bool is an int subclass in Python; `true` is not an amount.
    return (
        isinstance(amount, int)
        and not isinstance(amount, bool)
        and limits.amount_min <= amount <= limits.amount_max
    )


def check_transfer(
    kind: TransferKind,
    source: AccountFacts | None,
    destination: AccountFacts | None,
    amount: int,
) -> AcceptError | None:
    """Why this movement cannot be accepted, or None.

    For a deposit the source is the currency's system account, for a withdrawal the
    destination is; every other side is a client account, which may not be a system one.
    """
    if source is None or destination is None:
        return AcceptError.ACCOUNT_NOT_FOUND
    client_sides = {
        TransferKind.DEPOSIT: (destination,),
        TransferKind.WITHDRAWAL: (source,),
        TransferKind.TRANSFER: (source, destination),
    }[kind]
    # Before the same-account rule: a deposit into the system account would otherwise be
    # reported as "same account", although the client named only one account.
    if any(account.is_system for account in client_sides):
        return AcceptError.SYSTEM_ACCOUNT
    if source.id == destination.id:
        return AcceptError.SAME_ACCOUNT
    if source.currency != destination.currency:
        return AcceptError.CURRENCY_MISMATCH
    if not amount_is_valid(amount):
        return AcceptError.AMOUNT_OUT_OF_RANGE
    return None


def posting_shard(debited_account_id: str, shards: int) -> int:
    """The posting shard of a transfer, from the account it debits: transfers out of one
    account post in acceptance order on one shard, and a hot account holds up only its
    own shard. crc32, not hash(): every process must agree."""
    return zlib.crc32(debited_account_id.encode()) % shards
