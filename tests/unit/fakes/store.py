"""`FakeStore`: the database (committed state, a clock, locks, sequences, hooks for tests),
and the API keys it is created with."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from ledger_core.domain.access import ApiKey, Scope
from ledger_core.domain.records import EndpointRecord, TransferRecord

from .errors import LIMITATIONS_HIT, FakeLimitationError
from .rows import AccountRow, ApiKeyRow, EndpointRow, HoldRow, State, TransferRow
from .schema import _check_account, _check_transfer, _json
from .unit_of_work import FakeUnitOfWork, LockKey

TEST_API_KEY_ID = "key_test"


def admin_key(key_id: str) -> ApiKey:
    """An admin key as FakeStore(api_key_ids=...) creates it: its own owner."""
    return ApiKey(key_id, Scope.ADMIN, key_id)


# The key of the use cases' tests unless they say otherwise.
TEST_API_KEY = admin_key(TEST_API_KEY_ID)


class FakeStore:
    """The database: committed state, a clock, locks, sequences, and hooks for tests.

    Calling the store opens a unit of work, so the store itself is the `uow_factory`.
    """

    def __init__(
        self, *, api_key_ids: Iterable[str] = (TEST_API_KEY_ID,), now: datetime | None = None
    ) -> None:
        # The clock stands still unless a test advances it, so times are exact in
        # assertions; it starts at the real time, for the use cases that read that.
        now = datetime.now(UTC) if now is None else now
        self.state = State()
        # Bumped by every commit that changed something, so a unit of work knows its copy
        # is out of date.
        self.version = 0
        self._now = now
        self.opened = 0
        self.commits = 0
        self.open_uows: list[FakeUnitOfWork] = []
        self.row_locks: dict[LockKey, FakeUnitOfWork] = {}
        self.unique_holders: dict[LockKey, FakeUnitOfWork] = {}
        self.advisory_locks: dict[tuple[str, ...], FakeUnitOfWork] = {}
        self.next_seq = 1
        self.next_entry_id = 1
        self.next_attempt_id = 1
        # Every repository call, as "transfers.claim"; tests read the order of statements.
        self.calls: list[str] = []
        # Test hooks. `faults`: "transfers.finalize" -> raised whenever that is called (a
        # schema or code defect, or a database that is away). `poisoned`: transfer id ->
        # raised by entries.add_posted when its outcome is among those written (a
        # corrupted row that fails whatever batch it is in).
        self.faults: dict[str, Exception] = {}
        self.poisoned: dict[str, Exception] = {}
        # Called with the holder when a statement would wait for its lock; the hook
        # commits or rolls the holder back, as the other thread would.
        self.on_lock_wait: Callable[[FakeUnitOfWork], None] | None = None
        self.limitations: list[str] = []
        for key_id in api_key_ids:
            self.state.api_keys[key_id] = ApiKeyRow(
                key_id, "test key", "admin", key_id.encode(), key_id, now
            )

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)

    def __call__(self) -> FakeUnitOfWork:
        self.opened += 1
        return FakeUnitOfWork(self)

    def limitation(self, what: str) -> FakeLimitationError:
        self.limitations.append(what)
        LIMITATIONS_HIT.append(what)
        return FakeLimitationError(what)

    def release(self, uow: FakeUnitOfWork) -> None:
        for held in (self.row_locks, self.unique_holders, self.advisory_locks):
            for key in [k for k, holder in held.items() if holder is uow]:
                del held[key]

    # Direct reads and writes of the committed state, for tests (an operator's psql).

    def _changed(self) -> None:
        self.version += 1

    def transfer(self, transfer_id: str) -> TransferRow:
        return self.state.transfers[transfer_id]

    def status(self, transfer_id: str) -> str:
        return self.state.transfers[transfer_id].status

    def statuses(self, transfer_ids: Iterable[str]) -> list[str]:
        return [self.status(i) for i in transfer_ids]

    def balances(self) -> dict[str, int]:
        return {a.id: a.balance for a in self.state.accounts.values()}

    def balance(self, account_id: str) -> int:
        return self.state.accounts[account_id].balance

    def held(self, account_id: str) -> tuple[int, int]:
        """(held_out, held_in) of the account."""
        row = self.state.accounts[account_id]
        return row.held_out, row.held_in

    def hold(self, hold_id: str) -> HoldRow:
        return self.state.holds[hold_id]

    def set_balance(self, account_id: str, balance: int) -> None:
        self.state.accounts[account_id].balance = balance
        self._changed()

    def system_account_id(self, currency: str) -> str:
        [account_id] = [
            a.id for a in self.state.accounts.values() if a.is_system and a.currency == currency
        ]
        return account_id

    def backdate(self, transfer_id: str, seconds: float) -> None:
        """As if the transfer had been accepted `seconds` earlier."""
        row = self.state.transfers[transfer_id]
        row.created_at -= timedelta(seconds=seconds)
        self._changed()

    def revoke_api_key(self, key_id: str) -> None:
        self.state.api_keys[key_id].revoked_at = self._now
        self._changed()

    def insert_account(
        self,
        account_id: str,
        currency: str = "USD",
        *,
        balance: int = 0,
        overdraft: bool = False,
        owner: str | None = None,
    ) -> None:
        row = AccountRow(
            account_id, currency, None, {}, overdraft, False, balance, self._now, owner=owner
        )
        self.state.accounts[account_id] = row
        _check_account(self.state, row)
        self._changed()

    def insert_transfer(self, record: TransferRecord, *, api_key_id: str = TEST_API_KEY_ID) -> None:
        """A transfer row as given (status and times included), for tests of what reads
        transfers; the schema's checks still apply."""
        row = TransferRow(
            id=record.id,
            seq=self.next_seq,
            kind=record.kind,
            source_account_id=record.source_account_id,
            destination_account_id=record.destination_account_id,
            amount=record.amount,
            currency=record.currency,
            description=record.description,
            metadata=_json(record.metadata),
            api_key_id=api_key_id,
            created_at=record.created_at or self._now,
            status=record.status,
            rejection_reason=record.rejection_reason,
            posted_at=record.posted_at,
            finalized_at=None if record.status in ("pending", "quarantined") else self._now,
            posting_error="inserted quarantined" if record.status == "quarantined" else None,
        )
        self.next_seq += 1
        self.state.transfers[row.id] = row
        _check_transfer(self.state, row)
        self._changed()

    def insert_endpoint(self, record: EndpointRecord) -> None:
        self.state.endpoints[record.id] = EndpointRow(
            id=record.id,
            url=record.url,
            events=_json(record.events),
            account_ids=_json(record.account_ids),
            description=record.description,
            secret=record.secret,
            created_at=record.created_at,
            status=record.status,
            disabled_reason=record.disabled_reason,
            previous_secret=record.previous_secret,
            previous_secret_expires_at=record.previous_secret_expires_at,
            failing_since=record.failing_since,
            disabled_at=record.disabled_at,
        )
        self._changed()
