"""`make bench`: throughput and latency of the ledger, measured by hand; see bench/run.py."""
