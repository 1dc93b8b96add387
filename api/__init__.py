"""HTTP shell of the ledger: parse, call one use case, map the result."""

from api.app import create_app

__all__ = ["create_app"]
