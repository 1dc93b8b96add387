"""Opaque identifiers that sort by creation time.

A millisecond timestamp followed by random bits: ordering by id is ordering by creation,
which gives stable keyset pagination without a second sort column.
"""

import secrets
import time


def new_id(prefix: str, now_ms: int | None = None) -> str:
    milliseconds = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return f"{prefix}_{milliseconds:012x}{secrets.token_hex(8)}"


ACCOUNT_PREFIX = "acc"
TRANSFER_PREFIX = "tr"
API_KEY_PREFIX = "key"
BATCH_PREFIX = "bat"
