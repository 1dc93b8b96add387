"""Every limit of the ledger in one place, named with its unit last."""

from typing import Final

# Amounts are int64 (PostgreSQL bigint). Balances are 128-bit (numeric(39, 0)), as in
# TigerBeetle: a currency's system account is minus the sum of all its deposits, and
# int64 would let one maximal deposit exhaust it for everyone.
amount_min: Final = 1
amount_max: Final = 2**63 - 1
balance_min: Final = -(2**127)
balance_max: Final = 2**127 - 1

request_body_size_max_bytes: Final = 64 * 1024
idempotency_key_length_max: Final = 255
idempotency_ttl_seconds: Final = 24 * 60 * 60

page_size_default: Final = 50
page_size_max: Final = 200

description_length_max: Final = 1000
name_length_max: Final = 200
metadata_keys_max: Final = 50
metadata_key_length_max: Final = 40
metadata_value_length_max: Final = 500

# A posting batch holds its row locks for the whole database transaction; keep it short.
posting_batch_size_max: Final = 100
