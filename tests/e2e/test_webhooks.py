"""Every final transfer's event reaches each matching endpoint, signed, through failures."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from ledger_core.domain.webhooks import EventType
from tests.conftest import TEST_WEBHOOK_TIMEOUT_SECONDS, wait_final
from tests.e2e.helpers import deposit, open_account, post_money
from tests.support.processes import Process, free_port
from tests.support.receiver import Receiver, start_receiver

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("books", "webhook_worker")]
delivery_wait_timeout_seconds = 60


def verified(secret: str, request: Any) -> dict[str, Any]:
    return Webhook(secret).verify(request.body, request.headers)


def wait_deliveries(
    client: httpx.Client, endpoint_id: str, status: str, count: int
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + delivery_wait_timeout_seconds
    data: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        data = client.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries").json()["data"]
        if sum(d["status"] == status for d in data) >= count:
            return data
        time.sleep(0.2)
    raise AssertionError(f"deliveries of {endpoint_id}: {data}")


def test_each_final_transfer_reaches_matching_endpoints_only(
    client: httpx.Client, engine: Engine, receiver: Receiver, endpoints: Any
) -> None:
    funded, empty, elsewhere = open_account(client), open_account(client), open_account(client)
    every = endpoints(receiver.url("/every"))
    posted_only = endpoints(receiver.url("/posted-only"), events=["transfer.posted"])
    mine = endpoints(receiver.url("/mine"), account_ids=[empty["id"]])
    theirs = endpoints(receiver.url("/theirs"), account_ids=[elsewhere["id"]])
    assert every["secret"].startswith("whsec_")
    assert "secret" not in client.get(f"/v1/webhook-endpoints/{every['id']}").json()

    posted = deposit(client, funded["id"], 500)
    rejected = post_money(client, "/v1/withdrawals", {"account_id": empty["id"], "amount": 1})
    wait_final(engine, [posted["id"], rejected.json()["id"]])

    ours = {posted["id"], rejected.json()["id"]}

    def about_ours(path: str, secret: str, count: int) -> list[Any]:
        """Requests to `path` about this test's transfers (an all-accounts endpoint also
        hears of transfers other tests leave finishing)."""
        deadline = time.monotonic() + delivery_wait_timeout_seconds
        found: list[Any] = []
        while time.monotonic() < deadline:
            found = [
                r for r in receiver.requests_to(path) if verified(secret, r)["data"]["id"] in ours
            ]
            if len(found) >= count:
                break
            time.sleep(0.1)
        return found

    assert len(about_ours("/every", every["secret"], 2)) == 2
    assert len(about_ours("/posted-only", posted_only["secret"], 1)) == 1
    mine_got = about_ours("/mine", mine["secret"], 1)
    time.sleep(1)  # room for a wrong extra delivery to arrive before we count
    every_got = about_ours("/every", every["secret"], 2)
    posted_got = about_ours("/posted-only", posted_only["secret"], 1)
    assert len(every_got) == 2
    assert len(posted_got) == 1
    assert all(
        verified(posted_only["secret"], r)["type"] == "transfer.posted"
        for r in receiver.requests_to("/posted-only")
    )
    assert len(about_ours("/mine", mine["secret"], 1)) == 1
    assert receiver.requests_to("/theirs") == []
    assert client.get(f"/v1/webhook-endpoints/{theirs['id']}/deliveries").json()["data"] == []

    events = {
        verified(every["secret"], r)["data"]["id"]: verified(every["secret"], r) for r in every_got
    }
    assert set(events) == ours
    assert events[posted["id"]]["type"] == "transfer.posted"
    assert events[rejected.json()["id"]]["type"] == "transfer.rejected"
    for transfer_id, event in events.items():
        assert event["data"] == client.get(f"/v1/transfers/{transfer_id}").json()
        assert client.get(f"/v1/events/{event['id']}").json() == event
    assert verified(posted_only["secret"], posted_got[0])["type"] == "transfer.posted"
    assert verified(mine["secret"], mine_got[0])["data"]["id"] == rejected.json()["id"]
    with engine.connect() as connection:
        count = connection.scalar(
            text("SELECT count(*) FROM events WHERE transfer_id = ANY(:ids)"), {"ids": list(ours)}
        )
    assert count == 2

    request = every_got[0]
    tampered = request.body.replace(b'"amount"', b'"amount_"')
    with pytest.raises(WebhookVerificationError):
        Webhook(every["secret"]).verify(tampered, request.headers)
    stale = {**request.headers, "webhook-timestamp": str(int(time.time()) - 600)}
    with pytest.raises(WebhookVerificationError):
        Webhook(every["secret"]).verify(request.body, stale)
    with pytest.raises(WebhookVerificationError):
        Webhook(posted_only["secret"]).verify(request.body, request.headers)


def test_receiver_failing_three_times_gets_the_event_later_with_the_same_id(
    client: httpx.Client, engine: Engine, receiver: Receiver, endpoints: Any
) -> None:
    account = open_account(client)
    endpoint = endpoints(
        receiver.on("/flaky", lambda n: (500 if n <= 3 else 204, 0.0)), account_ids=[account["id"]]
    )
    wait_final(engine, [deposit(client, account["id"], 9)["id"]])
    got = receiver.wait_for("/flaky", 4)
    assert len({r.headers["webhook-id"] for r in got}) == 1
    for request in got:
        verified(endpoint["secret"], request)
    [delivery] = wait_deliveries(client, endpoint["id"], "succeeded", 1)
    assert delivery["attempts"] == 4
    assert delivery["last_status_code"] == 204
    detail = client.get(f"/v1/webhook-deliveries/{delivery['id']}").json()
    assert [a["status_code"] for a in detail["attempt_log"]] == [500, 500, 500, 204]


def test_receiver_down_then_back_gets_every_event(
    client: httpx.Client, engine: Engine, endpoints: Any
) -> None:
    port = free_port()  # nobody listens here yet: connections are refused
    account = open_account(client)
    endpoint = endpoints(f"http://127.0.0.1:{port}/back", account_ids=[account["id"]])
    ids = [deposit(client, account["id"], n)["id"] for n in (1, 2, 3)]
    wait_final(engine, ids)
    data = wait_deliveries(client, endpoint["id"], "failed", 3)
    assert all(d["last_error"].startswith("connection_error") for d in data)

    receiver = start_receiver(port)
    try:
        wait_deliveries(client, endpoint["id"], "succeeded", 3)
        got = receiver.requests_to("/back")
        event_ids = {r.headers["webhook-id"] for r in got}
        assert len(event_ids) == 3
        assert {verified(endpoint["secret"], r)["data"]["id"] for r in got} == set(ids)
    finally:
        receiver.stop()


def test_delivery_worker_killed_mid_send_is_attempted_again(
    client: httpx.Client,
    engine: Engine,
    receiver: Receiver,
    endpoints: Any,
    webhook_worker: Process,
) -> None:
    account = open_account(client)
    # The first request hangs (longer than the attempt timeout) so the worker is mid-send.
    hang_seconds = TEST_WEBHOOK_TIMEOUT_SECONDS + 5
    endpoint = endpoints(
        receiver.on("/slow", lambda n: (200, hang_seconds if n == 1 else 0.0)),
        account_ids=[account["id"]],
    )
    children = webhook_worker.children()
    wait_final(engine, [deposit(client, account["id"], 5)["id"]])
    receiver.wait_for("/slow", 1)
    for child in children:
        os.kill(child.pid, signal.SIGKILL)

    got = receiver.wait_for("/slow", 2)
    assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"]
    processed = {verified(endpoint["secret"], r)["id"] for r in got}  # the receiver's dedup
    assert len(processed) == 1
    [delivery] = wait_deliveries(client, endpoint["id"], "succeeded", 1)
    assert delivery["attempts"] >= 2


def test_rotation_signs_with_both_secrets(
    client: httpx.Client, engine: Engine, receiver: Receiver, endpoints: Any
) -> None:
    account = open_account(client)
    endpoint = endpoints(receiver.url("/rotated"), account_ids=[account["id"]])
    rotated = client.post(f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret")
    assert rotated.status_code == 200
    new_secret = rotated.json()["secret"]
    assert new_secret != endpoint["secret"]
    wait_final(engine, [deposit(client, account["id"], 3)["id"]])
    [request] = receiver.wait_for("/rotated", 1)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert verified(endpoint["secret"], request) == verified(new_secret, request)


def test_gone_disables_the_endpoint_and_retry_by_hand(
    client: httpx.Client, engine: Engine, receiver: Receiver, endpoints: Any
) -> None:
    account = open_account(client)
    endpoint = endpoints(
        receiver.on("/gone", lambda n: (410 if n == 1 else 200, 0.0)), account_ids=[account["id"]]
    )
    wait_final(engine, [deposit(client, account["id"], 4)["id"]])
    [delivery] = wait_deliveries(client, endpoint["id"], "abandoned", 1)
    assert delivery["last_status_code"] == 410
    current = client.get(f"/v1/webhook-endpoints/{endpoint['id']}").json()
    assert (current["status"], current["disabled_reason"]) == ("disabled", "gone")

    enabled = client.patch(f"/v1/webhook-endpoints/{endpoint['id']}", json={"status": "enabled"})
    assert enabled.json()["status"] == "enabled"
    retried = client.post(f"/v1/webhook-deliveries/{delivery['id']}/retry")
    assert retried.status_code == 202
    wait_deliveries(client, endpoint["id"], "succeeded", 1)
    assert len(receiver.requests_to("/gone")) == 2


def test_endpoint_crud_and_errors(client: httpx.Client, receiver: Receiver, endpoints: Any) -> None:
    endpoint = endpoints(receiver.url("/crud"), description="first")
    path = f"/v1/webhook-endpoints/{endpoint['id']}"
    changed = client.patch(
        path, json={"events": ["transfer.rejected"], "description": "second"}
    ).json()
    assert (changed["events"], changed["description"]) == (["transfer.rejected"], "second")
    reset = client.patch(path, json={"events": None}).json()
    assert sorted(reset["events"]) == sorted(EventType)
    ids = [e["id"] for e in client.get("/v1/webhook-endpoints?limit=200").json()["data"]]
    assert endpoint["id"] in ids
    assert client.patch(path, json={"url": None}).status_code == 422
    assert client.patch(path, json={"events": ["transfer.exploded"]}).status_code == 422
    assert (
        client.post(
            "/v1/webhook-endpoints", json={"url": receiver.url("/x"), "account_ids": ["acc_nope"]}
        ).status_code
        == 404
    )
    assert client.delete(path).status_code == 200
    assert client.get(path).status_code == 404
    assert client.get("/v1/events/evt_nope").status_code == 404
    assert client.post("/v1/webhook-deliveries/wd_nope/retry").status_code == 404
    assert client.get("/v1/webhook-deliveries/wd_nope").status_code == 404


def test_registration_refuses_private_and_insecure_urls_outside_development(
    app: Any, admin_key: str
) -> None:
    web = app.test_client()
    headers = {"Authorization": f"Bearer {admin_key}"}
    for url, code in [
        ("http://169.254.169.254/", "url_scheme_not_allowed"),
        ("https://169.254.169.254/latest/meta-data", "url_address_not_allowed"),
        ("https://10.0.0.1/", "url_address_not_allowed"),
        ("https://localhost/", "url_address_not_allowed"),
        ("https://127.0.0.1:8443/hook", "url_address_not_allowed"),
        ("https://[::1]/", "url_address_not_allowed"),
        ("https://192.168.1.10/", "url_address_not_allowed"),
        ("ftp://example.com/", "url_scheme_not_allowed"),
        ("https://user:pw@example.com/", "url_invalid"),
    ]:
        response = web.post("/v1/webhook-endpoints", json={"url": url}, headers=headers)
        assert response.status_code == 422, url
        assert response.json["code"] == code, url


def test_payload_timestamp_and_signature_header_shape(
    client: httpx.Client, engine: Engine, receiver: Receiver, endpoints: Any
) -> None:
    account = open_account(client)
    endpoint = endpoints(receiver.url("/shape"), account_ids=[account["id"]])
    wait_final(engine, [deposit(client, account["id"], 8)["id"]])
    [request] = receiver.wait_for("/shape", 1)
    body = json.loads(request.body)
    assert set(body) == {"id", "type", "timestamp", "data"}
    assert body["id"] == request.headers["webhook-id"]
    stamped = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    assert abs(stamped - datetime.now(UTC)) < timedelta(minutes=1)
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    version, _, signature = request.headers["webhook-signature"].partition(",")
    assert version == "v1"
    assert signature
    verified(endpoint["secret"], request)
