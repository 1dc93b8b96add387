"""The ledger itself: money rules, use cases and adapters. Imports neither Flask nor Celery."""
