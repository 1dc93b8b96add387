"""`_Repository`, what every fake repository is: its statements go through the unit of
work, and an error in one aborts the transaction."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .rows import State

if TYPE_CHECKING:
    from .store import FakeStore
    from .unit_of_work import FakeUnitOfWork


def _aborting(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def statement(self: _Repository, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception:
            # In PostgreSQL an error aborts the whole transaction, not just the statement.
            self._uow.aborted = True
            raise

    return statement


class _Repository:
    table = ""

    def __init_subclass__(cls) -> None:
        for name, value in list(vars(cls).items()):
            if callable(value) and not name.startswith("_"):
                setattr(cls, name, _aborting(value))

    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    def _statement(self, method: str) -> State:
        return self._uow.statement(f"{self.table}.{method}")

    @property
    def _s(self) -> State:
        # The current copy: after a wait it may be a fresh one, so never keep rows across
        # a lock.
        return self._uow.working

    @property
    def _now(self) -> datetime:
        return self._uow.now

    @property
    def _store(self) -> FakeStore:
        return self._uow.store
