"""The `ledger` console script creates working API keys and custom currencies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ledger_core.service_layer.access import authenticate

LEDGER = str(Path(sys.executable).parent / "ledger")


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LEDGER, *args],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_api_keys_create_prints_the_key_alone(database_url: str, uow_factory: Any) -> None:
    result = run_cli(database_url, "api-keys", "create", "--name", "ops", "--scope", "admin")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    found = authenticate(uow_factory, lines[0])
    assert found is not None
    assert found[1] == "admin"


def test_custom_currency_can_hold_accounts(database_url: str, app: Any, admin_key: str) -> None:
    web = app.test_client()
    headers = {"Authorization": f"Bearer {admin_key}"}
    assert web.post("/v1/accounts", json={"currency": "GOLD"}, headers=headers).status_code == 422
    result = run_cli(database_url, "currencies", "add", "GOLD", "--exponent", "0")
    assert result.returncode == 0, result.stderr
    again = run_cli(database_url, "currencies", "add", "GOLD", "--exponent", "0")
    assert again.returncode == 1
    assert "currency_exists" in again.stderr
    assert run_cli(database_url, "currencies", "add", "USD", "--exponent", "2").returncode == 1
    created = web.post("/v1/accounts", json={"currency": "GOLD"}, headers=headers)
    assert created.status_code == 201
    assert created.json["currency"] == "GOLD"
