"""The `ledger` console script creates working API keys (with an owner and an expiry),
lists them without their secrets, revokes them, and adds custom currencies."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ledger_core.domain.access import Scope
from ledger_core.service_layer.access import authenticate, create_api_key
from tests.support.processes import run_ledger


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_ledger(*args, database_url=database_url)


def test_api_keys_create_prints_the_key_alone(database_url: str, uow_factory: Any) -> None:
    result = run_cli(database_url, "api-keys", "create", "--name", "ops", "--scope", "admin")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    found = authenticate(uow_factory, lines[0])
    assert found is not None
    assert found.scope == "admin"
    assert found.owner == found.id  # its own owner unless told otherwise
    assert found.expires_at is None


def test_api_keys_create_sets_the_owner_and_the_expiry(database_url: str, uow_factory: Any) -> None:
    result = run_cli(
        database_url,
        *("api-keys", "create", "--name", "billing", "--scope", "write"),
        *("--owner", "team-billing", "--expires-in-days", "3"),
    )
    assert result.returncode == 0, result.stderr
    found = authenticate(uow_factory, result.stdout.strip())
    assert found is not None
    assert (found.scope, found.owner) == ("write", "team-billing")
    assert found.expires_at is not None
    left = found.expires_at - datetime.now(UTC)
    assert timedelta(days=3) - timedelta(minutes=1) < left <= timedelta(days=3)
    assert "owner team-billing" in result.stderr


@pytest.mark.parametrize(
    "option", [("--owner", ""), ("--owner", "a\nb"), ("--expires-in-days", "0")]
)
def test_api_keys_create_refuses_a_bad_owner_or_expiry(database_url: str, option: Any) -> None:
    result = run_cli(database_url, "api-keys", "create", "--name", "bad", *option)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""


def test_api_keys_revoke_refuses_the_key_and_says_why_it_cannot_twice(
    database_url: str, uow_factory: Any
) -> None:
    key_id, secret = create_api_key(uow_factory, name="to revoke", scope=Scope.WRITE)
    assert authenticate(uow_factory, secret) is not None
    result = run_cli(database_url, "api-keys", "revoke", key_id)
    assert result.returncode == 0, result.stderr
    assert authenticate(uow_factory, secret) is None
    again = run_cli(database_url, "api-keys", "revoke", key_id)
    assert again.returncode == 1
    assert "api_key_revoked" in again.stderr
    unknown = run_cli(database_url, "api-keys", "revoke", "key_nope")
    assert unknown.returncode == 1
    assert "api_key_not_found" in unknown.stderr


def test_api_keys_list_shows_every_key_but_never_a_secret(
    database_url: str, uow_factory: Any
) -> None:
    kept_id, kept = create_api_key(uow_factory, name="listed", scope=Scope.READ, owner="ops")
    gone_id, gone = create_api_key(uow_factory, name="revoked", scope=Scope.WRITE)
    assert run_cli(database_url, "api-keys", "revoke", gone_id).returncode == 0
    result = run_cli(database_url, "api-keys", "list")
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split("\t") == ["id", "name", "scope", "owner", "created", "expires", "revoked"]
    rows = {line.split("\t")[0]: line.split("\t") for line in lines}
    assert rows[kept_id][1:4] == ["listed", "read", "ops"]
    assert rows[kept_id][5:] == ["-", "-"]
    assert rows[gone_id][3] == gone_id
    assert rows[gone_id][6] != "-"
    assert kept not in result.stdout and gone not in result.stdout


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
