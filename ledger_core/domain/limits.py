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
# A batch of batch_items_max transfers with descriptions and metadata needs more room.
batch_request_body_size_max_bytes: Final = 4 * 1024 * 1024
idempotency_key_length_max: Final = 255
idempotency_ttl_seconds: Final = 24 * 60 * 60

page_size_default: Final = 50
page_size_max: Final = 200

description_length_max: Final = 1000
name_length_max: Final = 200
metadata_keys_max: Final = 50
metadata_key_length_max: Final = 40
metadata_value_length_max: Final = 500

# Transfers accepted by one POST /v1/transfers/batch, in one database transaction.
batch_items_max: Final = 1000

# A posting transaction claims at most this many transfers (an atomic batch counts whole,
# so one transaction may hold up to posting_batch_size_max + batch_items_max - 1). It
# holds its account locks until it commits: big enough to amortise each statement over
# many transfers, small enough to commit in tens of milliseconds.
posting_batch_size_max: Final = 1000
# One posting task drains at most this many batches or for this long, then hands over to
# a fresh task, so that a long backlog never runs into Celery's time limits.
posting_drain_batches_max: Final = 200
posting_drain_seconds_max: Final = 10.0
# A transfer whose posting fails (not for want of money: for a bug or a corrupt row) is
# retried after these delays, then quarantined.
posting_attempts_max: Final = 5
posting_retry_delays_seconds: Final = (1.0, 5.0, 30.0, 120.0)
posting_error_length_max: Final = 500
# The accepted-to-posted latency histogram observes at most this many transfers per batch.
posting_latency_samples_per_batch_max: Final = 50

# The API remembers an API key check this long: a revoked key stops working within it.
api_key_cache_ttl_seconds: Final = 5.0
api_key_cache_size_max: Final = 10_000
# An owner (whose accounts a key may debit) is printable text up to this length.
api_key_owner_length_max: Final = 255
# `ledger api-keys create --expires-in-days`: at most a century.
api_key_expires_in_days_max: Final = 36_500

# A ledger transaction holds 2 to this many entries.
transaction_entries_max: Final = 50
# Cashback rates are in basis points of the amount: 10,000 is the whole of it.
basis_points_per_unit: Final = 10_000
# Holds: how long one may reserve funds, and how long a payment's cashback may wait.
hold_expires_in_seconds_max: Final = 30 * 24 * 3600
cashback_delay_seconds_max: Final = 365 * 24 * 3600
# Holds whose expiry or cashback time has come, handled per beat run.
holds_due_batch_size_max: Final = 500
