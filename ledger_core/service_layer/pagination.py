"""Opaque keyset cursors: the client gets a token, never an offset."""

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ledger_core.service_layer.errors import Failure


class InvalidCursorError(ValueError):
    pass


def encode_cursor(last_key: str | int) -> str:
    return base64.urlsafe_b64encode(f"v1:{last_key}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise InvalidCursorError(cursor) from error
    version, _, key = raw.partition(":")
    if version != "v1" or not key:
        raise InvalidCursorError(cursor)
    return key


@dataclass(frozen=True, slots=True)
class Page:
    data: list[dict[str, Any]]
    next_cursor: str | None

    def to_json(self) -> dict[str, Any]:
        return {"object": "list", "data": self.data, "next_cursor": self.next_cursor}


def page_of(records: list[Any], limit: int) -> Page:
    """`records` holds up to limit + 1 rows: one more than asked tells whether another
    page exists, without a count."""
    shown = records[:limit]
    more = len(records) > limit and bool(shown)
    return Page([r.to_json() for r in shown], encode_cursor(shown[-1].id) if more else None)


def cursor_key(cursor: str | None, parse: Callable[[str], Any] = str) -> Any:
    """The key a cursor points after (None for the first page), or a Failure."""
    if cursor is None:
        return None
    try:
        return parse(decode_cursor(cursor))
    except (InvalidCursorError, ValueError):
        return Failure("invalid_cursor", "The cursor is not one this API returned.")
