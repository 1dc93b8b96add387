"""Posting throughput, measured by hand (`make bench`); prints figures, asserts nothing.

Accepts transfers through the real use case, then posts them with the real posting
service on PostgreSQL (embedded unless DATABASE_URL is set), one per transaction and
in batches, so the effect of batching is visible. Not a test: timings vary by machine.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from alembic import command
from alembic.config import Config

from devstack import create_database, start_stack
from ledger_core.adapters.database import make_engine
from ledger_core.adapters.sql import SqlUnitOfWork
from ledger_core.config import Settings, normalize_database_url
from ledger_core.domain.model import TransferKind
from ledger_core.service_layer import ledger
from ledger_core.service_layer.access import Scope, authenticate, create_api_key
from ledger_core.service_layer.ports import NullIdempotencyCache

ROOT = Path(__file__).resolve().parent.parent


def run(database_url: str, transfers: int, accounts: int, batch: int, threads: int) -> None:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url
    command.upgrade(config, "head")
    engine = make_engine(Settings(database_url=database_url))
    uow = partial(SqlUnitOfWork, engine)
    key_id = authenticate(uow, create_api_key(uow, name="bench", scope=Scope.ADMIN)[1])[0]

    def open_account() -> str:
        return ledger.open_account(
            uow,
            NullIdempotencyCache(),
            api_key_id=key_id,
            idempotency_key=None,
            request_hash="",
            currency="USD",
            name=None,
            metadata={},
            allow_overdraft=True,
        ).body["id"]

    def accept(i: int, ids: list[str]) -> str:
        return ledger.accept_transfer(
            uow,
            NullIdempotencyCache(),
            lambda _id: None,
            api_key_id=key_id,
            idempotency_key=secrets.token_hex(12),
            request_hash="h",
            kind=TransferKind.TRANSFER,
            source_account_id=ids[i % len(ids)],
            destination_account_id=ids[(i + 1) % len(ids)],
            amount=1,
            description=None,
            metadata={},
        ).body["id"]

    ids = [open_account() for _ in range(accounts)]
    for size in (1, batch):
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            accepted = list(pool.map(lambda i: accept(i, ids), range(transfers)))
        accept_seconds = time.perf_counter() - started
        chunks = [accepted[i : i + size] for i in range(0, len(accepted), size)]
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda chunk: ledger.post_transfers(uow, chunk), chunks))
        post_seconds = time.perf_counter() - started
        print(
            f"batch {size:>4}: accepted {transfers} in {accept_seconds:.2f} s "
            f"({transfers / accept_seconds:,.0f}/s); posted in {post_seconds:.2f} s "
            f"({transfers / post_seconds:,.0f}/s) over {accounts} accounts, {threads} threads"
        )
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transfers", type=int, default=2000)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    data_dir = None
    stack = None
    server_url = os.environ.get("DATABASE_URL")
    if not server_url:
        data_dir = Path(tempfile.mkdtemp(prefix="ledger-bench-"))
        stack = start_stack(data_dir, durable=True)
        server_url = stack.database_url
    try:
        url = normalize_database_url(
            create_database(server_url, f"ledger_bench_{secrets.token_hex(4)}")
        )
        run(url, args.transfers, args.accounts, args.batch, args.threads)
    finally:
        if stack is not None:
            stack.stop()
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
