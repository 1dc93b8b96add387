"""mypy checks here that every fake implements its protocol of
`ledger_core/service_layer/ports.py` (nothing imports this module at run time)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .accounts import FakeAccounts
from .books import FakeBooks
from .doubles import FakeIdempotencyCache, RecordingMetrics, RecordingWake
from .entries import FakeEntries
from .keys import FakeApiKeys, FakeCurrencies, FakeIdempotency
from .movements import FakeHolds, FakePayments
from .store import FakeStore
from .transfers import FakeTransfers
from .unit_of_work import FakeUnitOfWork
from .webhooks import FakeDeliveries, FakeEndpoints, FakeEvents

if TYPE_CHECKING:
    # mypy checks here that the fakes implement every protocol of the ports, exactly as
    # ledger_core/adapters/sql.py checks the SQL adapters.
    from ledger_core.service_layer import ports

    def _implements_protocols(factory: FakeStore) -> ports.UnitOfWorkFactory:
        return factory

    def _uow(uow: FakeUnitOfWork) -> ports.UnitOfWork:
        return uow

    def _accounts(repository: FakeAccounts) -> ports.AccountRepository:
        return repository

    def _transfers(repository: FakeTransfers) -> ports.TransferRepository:
        return repository

    def _entries(repository: FakeEntries) -> ports.EntryRepository:
        return repository

    def _holds(repository: FakeHolds) -> ports.HoldRepository:
        return repository

    def _payments(repository: FakePayments) -> ports.PaymentRepository:
        return repository

    def _idempotency(repository: FakeIdempotency) -> ports.IdempotencyRepository:
        return repository

    def _api_keys(repository: FakeApiKeys) -> ports.ApiKeyRepository:
        return repository

    def _currencies(repository: FakeCurrencies) -> ports.CurrencyRepository:
        return repository

    def _endpoints(repository: FakeEndpoints) -> ports.EndpointRepository:
        return repository

    def _events(repository: FakeEvents) -> ports.EventRepository:
        return repository

    def _deliveries(repository: FakeDeliveries) -> ports.DeliveryRepository:
        return repository

    def _books(repository: FakeBooks) -> ports.BooksChecks:
        return repository

    def _cache(cache: FakeIdempotencyCache) -> ports.IdempotencyCache:
        return cache

    def _wake(wake: RecordingWake) -> ports.WakePosting:
        return wake

    def _metrics(metrics: RecordingMetrics) -> ports.Metrics:
        return metrics
