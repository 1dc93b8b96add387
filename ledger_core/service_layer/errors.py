"""Expected failures of the use cases: values with a machine-readable code; and the one
exception the adapters raise for a storage that is down for now."""

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Failure:
    code: str
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Response:
    """A response to send, possibly replayed from an earlier request with the same key."""

    status_code: int
    body: dict[str, Any]
    replayed: bool = False


class StorageUnavailableError(Exception):
    """PostgreSQL did not answer, or refused for a reason that passes (connection lost,
    deadlock, serialization failure, lock or statement timeout). Nothing was committed
    unless the commit itself was cut off; an idempotent retry is always safe."""


class StorageRefusedError(Exception):
    """PostgreSQL refused a statement for what it holds or says (a constraint, a trigger, a
    malformed value): retrying it as it was fails again. Posting isolates the transfers
    that cause it; anything else that raises (a time limit, a bug outside the storage)
    is not theirs to answer for."""
