"""PostgreSQL repositories and the unit of work that wraps one database transaction."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from sqlalchemy import Connection, Engine, func, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ledger_core.adapters import tables as t
from ledger_core.adapters.webhook_sql import (
    DeliveryRepository,
    EndpointRepository,
    EventRepository,
)
from ledger_core.domain.model import (
    AccountState,
    Outcome,
    Posted,
    TransferStatus,
    TransferToPost,
)
from ledger_core.domain.records import AccountRecord, EntryRecord, TransferRecord


class SqlUnitOfWork:
    """One database transaction. It rolls back unless `commit()` was called: safe by default."""

    connection: Connection

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __enter__(self) -> SqlUnitOfWork:
        self.connection = self._engine.connect()
        self._transaction = self.connection.begin()
        self.accounts = AccountRepository(self.connection)
        self.transfers = TransferRepository(self.connection)
        self.entries = EntryRepository(self.connection)
        self.idempotency = IdempotencyRepository(self.connection)
        self.api_keys = ApiKeyRepository(self.connection)
        self.currencies = CurrencyRepository(self.connection)
        self.endpoints = EndpointRepository(self.connection)
        self.events = EventRepository(self.connection)
        self.deliveries = DeliveryRepository(self.connection)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._transaction.is_active:
                self._transaction.rollback()
        finally:
            self.connection.close()

    def commit(self) -> None:
        self._transaction.commit()

    def rollback(self) -> None:
        self._transaction.rollback()

    def try_advisory_lock(self, *parts: str) -> bool:
        """Take a transaction-scoped advisory lock on the given key without waiting."""
        key = int.from_bytes(
            hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest(),
            "big",
            signed=True,
        )
        return bool(
            self.connection.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key})
        )


def _account_record(row: Any) -> AccountRecord:
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
    )


class AccountRepository:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def add(
        self,
        *,
        id: str,
        currency: str,
        name: str | None,
        metadata: dict[str, str],
        allow_overdraft: bool,
    ) -> None:
        self._c.execute(
            t.accounts.insert().values(
                id=id,
                currency=currency,
                name=name,
                metadata=metadata,
                allow_overdraft=allow_overdraft,
            )
        )

    def ensure_system_account(self, currency: str, id: str) -> None:
        """Create the currency's system account unless it exists (concurrent callers agree)."""
        statement = (
            pg_insert(t.accounts)
            .values(
                id=id,
                currency=currency,
                name=f"{currency} system account",
                allow_overdraft=True,
                is_system=True,
            )
            .on_conflict_do_nothing(index_elements=["currency"], index_where=text("is_system"))
        )
        self._c.execute(statement)

    def system_state(self, currency: str) -> AccountState | None:
        row = self._c.execute(
            select(
                t.accounts.c.id,
                t.accounts.c.currency,
                t.accounts.c.balance,
                t.accounts.c.allow_overdraft,
            ).where(t.accounts.c.currency == currency, t.accounts.c.is_system)
        ).first()
        if row is None:
            return None
        return AccountState(row.id, row.currency, int(row.balance), row.allow_overdraft, True)

    def _select(self) -> Any:
        pending = t.transfers.alias("p")
        pending_out = (
            select(func.coalesce(func.sum(pending.c.amount), 0))
            .where(
                pending.c.source_account_id == t.accounts.c.id,
                pending.c.status == TransferStatus.PENDING.value,
            )
            .scalar_subquery()
        )
        pending_in = (
            select(func.coalesce(func.sum(pending.c.amount), 0))
            .where(
                pending.c.destination_account_id == t.accounts.c.id,
                pending.c.status == TransferStatus.PENDING.value,
            )
            .scalar_subquery()
        )
        return select(t.accounts, pending_in.label("pending_in"), pending_out.label("pending_out"))

    def get(self, account_id: str) -> AccountRecord | None:
        row = self._c.execute(self._select().where(t.accounts.c.id == account_id)).first()
        return None if row is None else _account_record(row)

    def list_page(self, *, after_id: str | None, limit: int) -> list[AccountRecord]:
        query = self._select().order_by(t.accounts.c.id).limit(limit)
        if after_id is not None:
            query = query.where(t.accounts.c.id > after_id)
        return [_account_record(row) for row in self._c.execute(query)]

    def states(self, account_ids: Iterable[str]) -> dict[str, AccountState]:
        """Read accounts without locks: for accept-time checks that need no balance."""
        rows = self._c.execute(
            select(
                t.accounts.c.id,
                t.accounts.c.currency,
                t.accounts.c.balance,
                t.accounts.c.allow_overdraft,
                t.accounts.c.is_system,
            ).where(t.accounts.c.id.in_(list(account_ids)))
        )
        return {
            row.id: AccountState(
                row.id, row.currency, int(row.balance), row.allow_overdraft, row.is_system
            )
            for row in rows
        }

    def lock(self, account_ids: Sequence[str]) -> dict[str, AccountState]:
        """Lock accounts in ascending id order, so that two postings never deadlock.

        FOR NO KEY UPDATE rather than FOR UPDATE: we change balances, never keys, and the
        weaker lock lets the API keep inserting transfers that reference these accounts
        (their foreign keys take FOR KEY SHARE, which FOR UPDATE would block).
        """
        rows = self._c.execute(
            select(
                t.accounts.c.id,
                t.accounts.c.currency,
                t.accounts.c.balance,
                t.accounts.c.allow_overdraft,
            )
            .where(t.accounts.c.id.in_(sorted(account_ids)))
            .order_by(t.accounts.c.id)
            .with_for_update(key_share=True)
        )
        return {
            row.id: AccountState(row.id, row.currency, int(row.balance), row.allow_overdraft)
            for row in rows
        }

    def set_balances(self, balances: dict[str, int]) -> None:
        if not balances:
            return
        self._c.execute(
            text("UPDATE accounts SET balance = :balance WHERE id = :id"),
            [{"id": account_id, "balance": balance} for account_id, balance in balances.items()],
        )


def _transfer_record(row: Any) -> TransferRecord:
    return TransferRecord(
        id=row.id,
        kind=row.kind,
        status=row.status,
        rejection_reason=row.rejection_reason,
        source_account_id=row.source_account_id,
        destination_account_id=row.destination_account_id,
        amount=row.amount,
        currency=row.currency,
        description=row.description,
        metadata=row.metadata,
        created_at=row.created_at,
        posted_at=row.posted_at,
    )


class TransferRepository:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def add(self, record: TransferRecord, *, api_key_id: str) -> TransferRecord:
        row = self._c.execute(
            t.transfers.insert()
            .values(
                id=record.id,
                kind=record.kind,
                source_account_id=record.source_account_id,
                destination_account_id=record.destination_account_id,
                amount=record.amount,
                currency=record.currency,
                description=record.description,
                metadata=record.metadata,
                api_key_id=api_key_id,
            )
            .returning(t.transfers)
        ).one()
        return _transfer_record(row)

    def get(self, transfer_id: str) -> TransferRecord | None:
        row = self._c.execute(select(t.transfers).where(t.transfers.c.id == transfer_id)).first()
        return None if row is None else _transfer_record(row)

    def get_many(self, transfer_ids: Sequence[str]) -> list[TransferRecord]:
        rows = self._c.execute(
            select(t.transfers)
            .where(t.transfers.c.id.in_(list(transfer_ids)))
            .order_by(t.transfers.c.id)
        )
        return [_transfer_record(row) for row in rows]

    def lock_pending(self, transfer_ids: Sequence[str]) -> list[TransferToPost]:
        """Lock the still-PENDING transfers among these ids, in id order.

        A second worker holding the same id waits here, then finds the row no longer
        pending (READ COMMITTED re-checks the WHERE clause) and posts nothing: a task
        delivered twice posts once.
        """
        rows = self._c.execute(
            select(
                t.transfers.c.id,
                t.transfers.c.source_account_id,
                t.transfers.c.destination_account_id,
                t.transfers.c.amount,
            )
            .where(
                t.transfers.c.id.in_(sorted(transfer_ids)),
                t.transfers.c.status == TransferStatus.PENDING.value,
            )
            .order_by(t.transfers.c.id)
            .with_for_update()
        )
        return [
            TransferToPost(row.id, row.source_account_id, row.destination_account_id, row.amount)
            for row in rows
        ]

    def finalize(self, outcomes: Sequence[Outcome]) -> None:
        posted = [{"id": o.transfer_id} for o in outcomes if isinstance(o, Posted)]
        rejected = [
            {"id": o.transfer_id, "reason": o.reason.value}
            for o in outcomes
            if not isinstance(o, Posted)
        ]
        if posted:
            self._c.execute(
                text(
                    "UPDATE transfers SET status = 'posted', posted_at = now(),"
                    " finalized_at = now() WHERE id = :id AND status = 'pending'"
                ),
                posted,
            )
        if rejected:
            self._c.execute(
                text(
                    "UPDATE transfers SET status = 'rejected', rejection_reason = :reason,"
                    " finalized_at = now() WHERE id = :id AND status = 'pending'"
                ),
                rejected,
            )

    def stale_pending_ids(self, *, older_than: datetime, limit: int) -> list[str]:
        return list(
            self._c.scalars(
                select(t.transfers.c.id)
                .where(
                    t.transfers.c.status == TransferStatus.PENDING.value,
                    t.transfers.c.created_at < older_than,
                )
                .order_by(t.transfers.c.created_at)
                .limit(limit)
            )
        )


class EntryRepository:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def add_posted(self, outcomes: Sequence[Outcome]) -> None:
        rows = [
            {
                "transfer_id": entry.transfer_id,
                "account_id": entry.account_id,
                "amount": entry.amount,
                "balance_after": entry.balance_after,
            }
            for outcome in outcomes
            if isinstance(outcome, Posted)
            for entry in (outcome.debit, outcome.credit)
        ]
        if rows:
            self._c.execute(t.entries.insert(), rows)

    def list_page(self, account_id: str, *, after_id: int | None, limit: int) -> list[EntryRecord]:
        query = (
            select(t.entries)
            .where(t.entries.c.account_id == account_id)
            .order_by(t.entries.c.id)
            .limit(limit)
        )
        if after_id is not None:
            query = query.where(t.entries.c.id > after_id)
        return [
            EntryRecord(
                id=row.id,
                transfer_id=row.transfer_id,
                account_id=row.account_id,
                amount=row.amount,
                balance_after=int(row.balance_after),
                created_at=row.created_at,
            )
            for row in self._c.execute(query)
        ]


class IdempotencyRepository:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def get(
        self, api_key_id: str, key: str, *, ttl_seconds: int
    ) -> tuple[tuple[str, int, dict[str, Any]], float] | None:
        """The stored response under this key and the seconds it has left, unless it is
        older than `ttl_seconds`."""
        expires_at = t.idempotency_keys.c.created_at + timedelta(seconds=ttl_seconds)
        row = self._c.execute(
            select(
                t.idempotency_keys.c.request_hash,
                t.idempotency_keys.c.status_code,
                t.idempotency_keys.c.response_body,
                func.extract("epoch", expires_at - func.now()).label("expires_in"),
            ).where(
                tuple_(t.idempotency_keys.c.api_key_id, t.idempotency_keys.c.key)
                == (api_key_id, key),
                t.idempotency_keys.c.created_at >= func.now() - timedelta(seconds=ttl_seconds),
            )
        ).first()
        if row is None:
            return None
        stored = (row.request_hash, row.status_code, row.response_body)
        return stored, float(row.expires_in)

    def put(
        self,
        api_key_id: str,
        key: str,
        *,
        request_hash: str,
        status_code: int,
        response_body: dict[str, Any],
    ) -> None:
        """Store the response; an expired row under the same key is replaced."""
        statement = pg_insert(t.idempotency_keys).values(
            api_key_id=api_key_id,
            key=key,
            request_hash=request_hash,
            status_code=status_code,
            response_body=response_body,
        )
        statement = statement.on_conflict_do_update(
            index_elements=["api_key_id", "key"],
            set_={
                "request_hash": statement.excluded.request_hash,
                "status_code": statement.excluded.status_code,
                "response_body": statement.excluded.response_body,
                "created_at": func.now(),
            },
        )
        self._c.execute(statement)

    def prune(self, *, older_than: datetime) -> int:
        result = self._c.execute(
            t.idempotency_keys.delete().where(t.idempotency_keys.c.created_at < older_than)
        )
        return result.rowcount


class ApiKeyRepository:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def add(self, *, id: str, name: str, scope: str, key_hash: bytes) -> None:
        self._c.execute(
            t.api_keys.insert().values(id=id, name=name, scope=scope, key_hash=key_hash)
        )

    def find_active(self, key_hash: bytes) -> tuple[str, str] | None:
        row = self._c.execute(
            select(t.api_keys.c.id, t.api_keys.c.scope).where(
                t.api_keys.c.key_hash == key_hash, t.api_keys.c.revoked_at.is_(None)
            )
        ).first()
        return None if row is None else (row.id, row.scope)


class CurrencyRepository:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def custom_exponent(self, code: str) -> int | None:
        return self._c.scalar(
            select(t.custom_currencies.c.exponent).where(t.custom_currencies.c.code == code)
        )

    def add_custom(self, code: str, exponent: int) -> bool:
        # RETURNING, not rowcount: the driver reports -1 for an INSERT ... ON CONFLICT.
        inserted = self._c.scalar(
            pg_insert(t.custom_currencies)
            .values(code=code, exponent=exponent)
            .on_conflict_do_nothing()
            .returning(t.custom_currencies.c.code)
        )
        return inserted is not None

    def list_custom(self) -> list[tuple[str, int]]:
        rows = self._c.execute(
            select(t.custom_currencies.c.code, t.custom_currencies.c.exponent).order_by(
                t.custom_currencies.c.code
            )
        )
        return [(row.code, row.exponent) for row in rows]
