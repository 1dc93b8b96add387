"""Group commit: the writes of concurrent requests of one process share a transaction.

A durable commit waits for the disk; a thousand commits a second would spend most of the
database's time there, one per request. Instead each request hands its write to the
process's writer thread and waits: the writer takes every write that queued up while the
previous transaction was committing (at most `group_size_max`), stores them in one
transaction, and wakes their requests. A request still answers only after its own write
is committed, so nothing is acknowledged that could be lost.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar, cast

from ledger_core.service_layer.errors import StorageUnavailableError

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

# A gunicorn process serves a few dozen threads at most; a group never needs to be bigger.
group_size_max = 64
# A request gives up waiting after this (and answers 503): longer than the database's
# statement timeout, so it only happens when the writer is stuck. The write may still
# commit; a retry with the same Idempotency-Key then replays it.
group_wait_seconds_max = 35.0


class GroupCommitError(RuntimeError):
    """The group's transaction failed for a reason other than the database being away."""


class _Slot(Generic[Item, Result]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.done = threading.Event()
        self.result: Result | None = None
        self.error: BaseException | None = None


class GroupCommitter(Generic[Item, Result]):
    """Calls `commit(items) -> results` (one result per item, in order) on groups of the
    items that threads submit concurrently; each caller gets its own result, or raises
    when its result is an exception."""

    def __init__(
        self,
        commit: Callable[[list[Item]], list[Result]],
        *,
        size_max: int = group_size_max,
        wait_seconds_max: float = group_wait_seconds_max,
        name: str = "group-commit",
    ) -> None:
        self._commit = commit
        self._size_max = size_max
        self._wait_seconds_max = wait_seconds_max
        self._name = name
        self._queue: queue.SimpleQueue[_Slot[Item, Result]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def __call__(self, item: Item) -> Result:
        slot: _Slot[Item, Result] = _Slot(item)
        self._start()
        self._queue.put(slot)
        if not slot.done.wait(self._wait_seconds_max):
            raise StorageUnavailableError(
                f"no commit within {self._wait_seconds_max} s; retry with the same key"
            )
        if isinstance(slot.error, StorageUnavailableError):
            raise StorageUnavailableError(str(slot.error)) from slot.error
        if slot.error is not None:
            raise GroupCommitError("storing the transfer failed") from slot.error
        if isinstance(slot.result, BaseException):
            # The group failed and this item failed alone too: its own error.
            raise GroupCommitError("storing the transfer failed") from slot.result
        return cast(Result, slot.result)  # set whenever error is None

    def _start(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            # A fork inherits no thread, only this object: start this process's own.
            self._queue = queue.SimpleQueue()
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            group = [self._queue.get()]
            while len(group) < self._size_max:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self._commit([slot.item for slot in group])
                for slot, result in zip(group, results, strict=True):
                    slot.result = result
            except BaseException as error:  # every waiter must learn, whatever happened
                log.warning("a group of %d writes failed: %s", len(group), error)
                for slot in group:
                    slot.error = error
            finally:
                for slot in group:
                    slot.done.set()
