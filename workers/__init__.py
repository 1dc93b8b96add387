"""Celery shell of the ledger: thin tasks that load by id and call one use case."""
