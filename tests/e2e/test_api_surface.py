"""The API documents itself from the code that validates it, and finishes requests in
flight when told to stop."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, text

from api.operations import REGISTRY
from tests.e2e.helpers import new_key
from tests.support.processes import start_api

lock_wait_timeout_seconds = 30


def test_openapi_lists_every_operation_with_its_validation_schema(app: Any) -> None:
    web = app.test_client()
    document = web.get("/openapi.json").json
    assert document["openapi"].startswith("3.")
    for op in REGISTRY:
        operation = document["paths"][op.path][op.method.lower()]
        if op.body is not None:
            ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
            assert set(schema["properties"]) == set(op.body.model_fields)
        if op.idempotency == "required":
            names = {p["name"]: p["required"] for p in operation["parameters"]}
            assert names["Idempotency-Key"] is True
    transfer = document["components"]["schemas"]["TransferCreate"]
    assert transfer["properties"]["amount"]["maximum"] == 2**63 - 1
    assert transfer["properties"]["amount"]["minimum"] == 1
    assert transfer["additionalProperties"] is False
    page = web.get("/docs")
    assert page.status_code == 200
    assert b"/openapi.json" in page.data
    asset = web.get("/docs/static/swagger-ui-bundle.js")
    assert asset.status_code == 200
    asset.close()


def test_sigterm_lets_the_api_finish_a_request_in_flight(
    process_env: dict[str, str],
    tmp_path: Path,
    engine: Engine,
    client: httpx.Client,
    admin_key: str,
) -> None:
    account = client.post("/v1/accounts", json={"currency": "USD"}).json()
    process, base_url = start_api(process_env, tmp_path)
    result: dict[str, Any] = {}

    def deposit() -> None:
        result["response"] = httpx.post(
            f"{base_url}/v1/deposits",
            json={"account_id": account["id"], "amount": 5},
            headers={"Authorization": f"Bearer {admin_key}", "Idempotency-Key": new_key()},
            timeout=60,
        )

    try:
        with engine.connect() as blocker:
            # FOR UPDATE blocks the new transfer's foreign-key check: the request is held
            # inside its database transaction until we let go.
            blocker.execute(
                text("SELECT 1 FROM accounts WHERE id = :id FOR UPDATE"), {"id": account["id"]}
            )
            sender = threading.Thread(target=deposit)
            sender.start()
            deadline = time.monotonic() + lock_wait_timeout_seconds
            while time.monotonic() < deadline:
                # A connection of its own: pg_stat_activity is a snapshot per transaction.
                with engine.connect() as watcher:
                    waiting = watcher.scalar(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                            " AND datname = current_database()"
                        )
                    )
                if waiting:
                    break
                time.sleep(0.1)
            assert waiting, f"the request never waited for the lock: {result}"
            process.popen.send_signal(signal.SIGTERM)
            time.sleep(1)
            assert process.popen.poll() is None, "gunicorn quit with a request in flight"
            blocker.rollback()
        sender.join(lock_wait_timeout_seconds)
        assert result["response"].status_code == 202
        assert process.popen.wait(lock_wait_timeout_seconds) == 0
    finally:
        process.stop()  # stopped by PID even when an assertion failed
