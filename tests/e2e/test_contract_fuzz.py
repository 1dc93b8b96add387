"""Every operation of the generated /openapi.json, fuzzed by schemathesis against the real
API under gunicorn with valid and invalid inputs, answers without a 5xx and as the
document says (status, content type, body, headers), refuses what the document forbids,
and leaves the books reconciled with nothing pending."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine

from api.operations import REGISTRY, Operation
from ledger_core.service_layer.access import Scope, create_api_key
from tests.conftest import wait_final
from tests.support.processes import free_port

pytestmark = pytest.mark.e2e

# Examples per operation and generation mode: 22 operations x 2 modes x this is about
# 1,000 requests, 15-25 s on 2 cores. Raise it locally to hunt (FUZZ_EXAMPLES is not read:
# change the constant, so a failure names the number it was found with).
fuzz_examples_per_operation_max = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]
ACCOUNT_FIELDS = ("account_id", "source_account_id", "destination_account_id")
# Generated webhook URLs could name any host: endpoints created by the fuzz point at a
# loopback port nobody listens on, and only at the fuzz's own accounts.
WEBHOOK_OPERATIONS = {
    ("POST", "/v1/webhook-endpoints"),
    ("PATCH", "/v1/webhook-endpoints/{endpoint_id}"),
}


class FuzzRun:
    """What the fuzz created, to wait for and to clean up."""

    def __init__(self, accounts: list[str], dead_url: str) -> None:
        self.accounts = accounts
        self.dead_url = dead_url
        self.transfer_ids: list[str] = []
        self.endpoint_ids: list[str] = []

    def aim(self, case: Any, pick: int) -> None:
        """Point a valid case at the fuzz's accounts (pick 0 keeps what was generated, so
        unknown ids are fuzzed too) and its webhooks at the dead loopback port."""
        if pick and case.path_parameters and "account_id" in case.path_parameters:
            case.path_parameters["account_id"] = self.accounts[pick % len(self.accounts)]
        body = case.body if isinstance(case.body, dict) else None
        if body is None:
            return
        if (case.method.upper(), case.path) in WEBHOOK_OPERATIONS:
            if "url" in body or case.method.upper() == "POST":
                body["url"] = self.dead_url
            body["account_ids"] = self.accounts[:1]
            return
        if pick:
            items = body.get("items") if isinstance(body.get("items"), list) else [body]
            for n, item in enumerate(items):
                for field_name in ACCOUNT_FIELDS:
                    if isinstance(item, dict) and field_name in item:
                        item[field_name] = self.accounts[(pick + n) % len(self.accounts)]

    def remember(self, case: Any, response: Any) -> None:
        if response.status_code not in (201, 202):
            return
        body = response.json()
        if body.get("object") == "transfer":
            self.transfer_ids.append(body["id"])
        elif body.get("object") == "transfer_batch":
            self.transfer_ids.extend(item["id"] for item in body["items"])
        elif body.get("object") == "webhook_endpoint" and case.method.upper() == "POST":
            self.endpoint_ids.append(body["id"])


@pytest.fixture(scope="module")
def fuzz_key(uow_factory: Any) -> str:
    # Its own API key: Idempotency-Keys are scoped to it, so no generated key can collide
    # with another test's.
    return create_api_key(uow_factory, name="contract fuzz", scope=Scope.ADMIN)[1]


@pytest.fixture(scope="module")
def fuzz_schema(api_url: str, fuzz_key: str) -> Any:
    config = schemathesis.Config.from_dict({"auth": {"openapi": {"bearer": {"bearer": fuzz_key}}}})
    return schemathesis.openapi.from_url(f"{api_url}/openapi.json", config=config)


@pytest.fixture(scope="module")
def fuzz_run(
    api_url: str, fuzz_key: str, engine: Engine, transfer_worker: Any
) -> Iterator[FuzzRun]:
    headers = {"Authorization": f"Bearer {fuzz_key}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=30) as http:
        accounts = [
            http.post("/v1/accounts", json={"currency": "USD", "name": f"fuzz {n}"}).json()["id"]
            for n in range(3)
        ]
        run = FuzzRun(accounts, f"http://127.0.0.1:{free_port()}/fuzz")
        yield run
        for endpoint_id in run.endpoint_ids:
            # Deleting abandons whatever deliveries the fuzz's own transfers queued for it.
            assert http.delete(f"/v1/webhook-endpoints/{endpoint_id}").status_code == 200


def _has_inputs(op: Operation) -> bool:
    """Whether a negative case exists: something the document constrains."""
    return bool(op.body or op.query or "{" in op.path or op.idempotency != "none")


CASES = [
    pytest.param(op.method, op.path, mode, id=f"{op.method} {op.path} {mode.value}")
    for op in REGISTRY
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or _has_inputs(op)
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_operation_keeps_its_contract(
    fuzz_schema: Any, fuzz_run: FuzzRun, api_url: str, method: str, path: str, mode: Any
) -> None:
    operation = fuzz_schema.find_operation_by_path(method, path)
    assert operation is not None, f"{method} {path} is missing from /openapi.json"

    @settings(
        max_examples=fuzz_examples_per_operation_max,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=operation.as_strategy(generation_mode=mode), pick=st.integers(0, 3))
    def fuzz(case: Any, pick: int) -> None:
        if mode is GenerationMode.POSITIVE:
            fuzz_run.aim(case, pick)
        response = case.call(base_url=api_url, timeout=30)
        fuzz_run.remember(case, response)
        case.validate_response(response, checks=CHECKS)

    fuzz()


def test_fuzzing_left_nothing_pending_and_the_books_balance(
    fuzz_run: FuzzRun, engine: Engine, books: None
) -> None:
    # Last in this module: the session's worker posts what the fuzz accepted, then the
    # `books` fixture reconciles.
    statuses = wait_final(engine, fuzz_run.transfer_ids)
    assert "pending" not in statuses.values()
