"""Opaque keyset cursors: the client gets a token, never an offset."""

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ledger_core.service_layer.errors import Failure
from ledger_core.service_layer.ports import UnitOfWork, UnitOfWorkFactory

# Ours are under 64 characters of unpadded base64url; anything longer or with other
# characters was not made here and is not decoded (the decoder would skip strays).
cursor_length_max = 256
CURSOR_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
# What a cursor's key may hold: the ids and positions this API pages by. Anything else
# (U+0000, which PostgreSQL text cannot even compare, control characters, other
# scripts) was not made here.
CURSOR_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
# Entry positions are bigint: ASCII digits, at most 19, at most 2^63 - 1.
POSITION_PATTERN = re.compile(r"[0-9]{1,19}")
position_max = 2**63 - 1


class InvalidCursorError(ValueError):
    pass


def identifier(key: str) -> str:
    """A cursor key that is an id; ValueError for anything no id of ours looks like."""
    if not CURSOR_KEY_PATTERN.fullmatch(key):
        raise ValueError(key)
    return key


def position(key: str) -> int:
    """A cursor key that is an entry position; ValueError for anything int() would
    stretch to (signs, spaces, underscores, other scripts' digits, beyond bigint)."""
    if not POSITION_PATTERN.fullmatch(key) or int(key) > position_max:
        raise ValueError(key)
    return int(key)


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


def cursor_key(cursor: str | None, parse: Callable[[str], Any] = identifier) -> Any:
    """The key a cursor points after (None for the first page), or a Failure. `parse`
    refuses keys this API never puts in a cursor, so none reaches a query."""
    if cursor is None:
        return None
    try:
        if len(cursor) > cursor_length_max or not CURSOR_PATTERN.fullmatch(cursor):
            raise InvalidCursorError(cursor[:cursor_length_max])
        return parse(decode_cursor(cursor))
    except (InvalidCursorError, ValueError):
        return Failure("invalid_cursor", "The cursor is not one this API returned.")


# What a page reads: the unit of work, the key to start after (None: the first page) and
# how many rows at most; the rows, or a Failure (its parent is missing, say).
FetchPage = Callable[[UnitOfWork, Any, int], "list[Any] | Failure"]


def read_page(
    uow_factory: UnitOfWorkFactory,
    cursor: str | None,
    limit: int,
    fetch: FetchPage,
    parse: Callable[[str], Any] = identifier,
) -> Page | Failure:
    """One page of a keyset listing: the cursor checked before any query, one row more
    than `limit` fetched to tell whether another page follows."""
    after = cursor_key(cursor, parse)
    if isinstance(after, Failure):
        return after
    with uow_factory() as uow:
        records = fetch(uow, after, limit + 1)
    return records if isinstance(records, Failure) else page_of(records, limit)
