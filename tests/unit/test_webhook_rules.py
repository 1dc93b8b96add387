"""Webhook rules hold without servers or network: the retry schedule and endpoint health under an
injected clock, secret rotation and Standard Webhooks signatures, URL and address checks
against SSRF, the sender's refusals, endpoint matching, event payloads and delivery attempts."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from fakes import FakeStore
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from ledger_core.adapters.webhook_http import (
    AddressGuard,
    AttemptResult,
    HttpxSender,
    PinnedTransport,
    signature_headers,
)
from ledger_core.config import Settings
from ledger_core.domain.records import EndpointRecord, TransferRecord
from ledger_core.domain.webhooks import (
    DEFAULT_RETRY_SCHEDULE_SECONDS,
    SECRET_PREFIX,
    DeliveryStatus,
    EventType,
    address_allowed,
    check_url_syntax,
    decide_after_attempt,
    endpoint_failing_disable_after_seconds,
    endpoint_matches,
    event_payload,
    new_secret,
    retry_delay_seconds,
    signing_secrets,
    url_length_max,
)
from ledger_core.service_layer import posting
from ledger_core.service_layer.ports import Outbox
from ledger_core.service_layer.posting import PostingOptions
from ledger_core.service_layer.webhooks import attempt_delivery

SCHEDULE = tuple(float(s) for s in DEFAULT_RETRY_SCHEDULE_SECONDS)
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
DAY = 24 * 3600
PUBLIC_V4 = "93.184.216.34"


def endpoint(**changes: Any) -> EndpointRecord:
    base = EndpointRecord(
        id="we_1",
        url="https://hooks.example.com/ledger",
        events=[e.value for e in EventType],
        account_ids=None,
        description=None,
        status="enabled",
        disabled_reason=None,
        secret=new_secret(),
        previous_secret=None,
        previous_secret_expires_at=None,
        failing_since=None,
        created_at=T0,
    )
    return replace(base, **changes)


def transfer(**changes: Any) -> TransferRecord:
    base = TransferRecord(
        id="tr_1",
        kind="transfer",
        status="posted",
        rejection_reason=None,
        source_account_id="acc_alice",
        destination_account_id="acc_bob",
        amount=1250,
        currency="USD",
        description="rent",
        metadata={"invoice": "42"},
        created_at=T0,
        posted_at=T0 + timedelta(seconds=1),
    )
    return replace(base, **changes)


def decide(attempts_made: int, status_code: int | None, **kwargs: Any) -> Any:
    arguments: dict[str, Any] = {
        "now": T0,
        "failing_since": None,
        "schedule": SCHEDULE,
        "jitter": 0.0,
    } | kwargs
    return decide_after_attempt(attempts_made=attempts_made, status_code=status_code, **arguments)


# retry_delay_seconds


def test_default_schedule_lasts_about_three_days_even_with_extreme_jitter() -> None:
    total = sum(SCHEDULE)
    assert 2.5 * DAY <= total * 0.9 <= total * 1.1 <= 3.5 * DAY
    by_delays = [retry_delay_seconds(n, SCHEDULE, 1.0) for n in range(1, len(SCHEDULE) + 1)]
    assert sum(d for d in by_delays if d is not None) == pytest.approx(total * 1.1)
    # Every delivery is abandoned on schedule before its endpoint could count as failing.
    assert total * 1.1 < endpoint_failing_disable_after_seconds


@pytest.mark.parametrize("jitter", [-1.0, -0.5, 0.0, 0.3, 1.0])
def test_delay_is_the_scheduled_one_scaled_by_jitter(jitter: float) -> None:
    for n in range(1, len(SCHEDULE) + 1):
        expected = SCHEDULE[n - 1] * (1 + 0.1 * jitter)
        assert retry_delay_seconds(n, SCHEDULE, jitter) == pytest.approx(expected)


def test_no_delay_before_the_first_attempt_or_after_the_last() -> None:
    assert retry_delay_seconds(0, SCHEDULE, 0.0) is None
    assert retry_delay_seconds(-1, SCHEDULE, 0.0) is None
    assert retry_delay_seconds(len(SCHEDULE) + 1, SCHEDULE, 0.0) is None
    assert retry_delay_seconds(len(SCHEDULE) + 50, SCHEDULE, 1.0) is None
    assert retry_delay_seconds(1, (), 0.0) is None
    assert retry_delay_seconds(len(SCHEDULE), SCHEDULE, 0.0) == SCHEDULE[-1]


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=len(SCHEDULE)),
    jitter=st.floats(min_value=-1.0, max_value=1.0, allow_nan=False),
)
def test_jitter_keeps_the_delay_within_ten_percent(n: int, jitter: float) -> None:
    delay = retry_delay_seconds(n, SCHEDULE, jitter)
    assert delay is not None
    base = SCHEDULE[n - 1]
    assert base * 0.9 - 1e-9 <= delay <= base * 1.1 + 1e-9


# decide_after_attempt


@pytest.mark.parametrize("code", [200, 201, 202, 204, 299])
def test_2xx_succeeds_with_nothing_scheduled(code: int) -> None:
    # Even for an endpoint that has been failing for a long time: success wins.
    for failing_since in (None, T0 - timedelta(days=30)):
        decision = decide(3, code, failing_since=failing_since)
        assert decision.status is DeliveryStatus.SUCCEEDED
        assert decision.next_attempt_at is None
        assert decision.disable_endpoint is None


@pytest.mark.parametrize("attempts_made", [1, 5, len(SCHEDULE), len(SCHEDULE) + 1])
def test_410_gone_abandons_and_disables_the_endpoint(attempts_made: int) -> None:
    decision = decide(attempts_made, 410)
    assert decision.status is DeliveryStatus.ABANDONED
    assert decision.next_attempt_at is None
    assert decision.disable_endpoint == "gone"


def test_an_endpoint_failing_for_five_days_is_disabled_one_second_less_is_retried() -> None:
    five_days = timedelta(seconds=endpoint_failing_disable_after_seconds)
    assert five_days == timedelta(days=5)
    for failing_since in (T0 - five_days, T0 - five_days - timedelta(hours=1)):
        decision = decide(2, 500, failing_since=failing_since)
        assert decision.status is DeliveryStatus.ABANDONED
        assert decision.next_attempt_at is None
        assert decision.disable_endpoint == "failing"
    decision = decide(2, 500, failing_since=T0 - five_days + timedelta(seconds=1))
    assert decision.status is DeliveryStatus.FAILED
    assert decision.next_attempt_at == T0 + timedelta(seconds=SCHEDULE[1])
    assert decision.disable_endpoint is None


@pytest.mark.parametrize("n", range(1, len(SCHEDULE) + 1))
def test_failures_are_retried_on_schedule(n: int) -> None:
    decision = decide(n, 503, failing_since=T0 - timedelta(hours=1))
    assert decision.status is DeliveryStatus.FAILED
    assert decision.next_attempt_at == T0 + timedelta(seconds=SCHEDULE[n - 1])
    assert decision.disable_endpoint is None
    jittered = decide(n, 503, jitter=-1.0)
    assert jittered.next_attempt_at == T0 + timedelta(seconds=SCHEDULE[n - 1] * 0.9)


def test_the_failure_after_the_last_scheduled_retry_abandons_without_disabling() -> None:
    decision = decide(len(SCHEDULE) + 1, 500, failing_since=T0 - timedelta(days=3))
    assert decision.status is DeliveryStatus.ABANDONED
    assert decision.next_attempt_at is None
    assert decision.disable_endpoint is None


@pytest.mark.parametrize(
    "code", [None, 100, 199, 300, 301, 302, 303, 307, 308, 400, 401, 404, 409, 429, 500, 502, 504]
)
def test_timeouts_redirects_and_errors_are_failures(code: int | None) -> None:
    decision = decide(1, code)
    assert decision.status is DeliveryStatus.FAILED
    assert decision.next_attempt_at == T0 + timedelta(seconds=SCHEDULE[0])
    assert decision.disable_endpoint is None


@pytest.mark.parametrize("jitter", [0.0, 1.0, -1.0])
def test_a_whole_schedule_of_failures_under_an_injected_clock(jitter: float) -> None:
    now, failing_since, attempts = T0, None, 0
    while True:
        attempts += 1
        decision = decide(attempts, None, now=now, failing_since=failing_since, jitter=jitter)
        failing_since = failing_since or now  # what record_failure keeps: the first failure
        if decision.status is not DeliveryStatus.FAILED:
            break
        assert decision.next_attempt_at is not None
        assert decision.next_attempt_at > now
        now = decision.next_attempt_at
        assert attempts <= len(SCHEDULE), "retried past the end of the schedule"
    assert decision.status is DeliveryStatus.ABANDONED
    assert decision.disable_endpoint is None
    assert attempts == len(SCHEDULE) + 1
    elapsed = (now - T0).total_seconds()
    assert elapsed == pytest.approx(sum(SCHEDULE) * (1 + 0.1 * jitter), abs=1e-3)
    if jitter == 0.0:
        assert now - T0 == timedelta(seconds=sum(SCHEDULE))


# signing_secrets and new_secret


def test_signing_secrets_follow_the_rotation_overlap() -> None:
    expires = T0 + timedelta(hours=24)
    assert signing_secrets("new", None, None, T0) == ["new"]
    assert signing_secrets("new", None, expires, T0) == ["new"]
    assert signing_secrets("new", "old", None, T0) == ["new"]
    assert signing_secrets("new", "old", expires, T0) == ["new", "old"]
    assert signing_secrets("new", "old", expires, expires - timedelta(microseconds=1)) == [
        "new",
        "old",
    ]
    assert signing_secrets("new", "old", expires, expires) == ["new"]
    assert signing_secrets("new", "old", expires, expires + timedelta(days=1)) == ["new"]


def test_new_secrets_are_prefixed_base64_of_32_random_bytes() -> None:
    made = [new_secret() for _ in range(50)]
    assert len(set(made)) == len(made)
    for secret in made:
        assert secret.startswith(SECRET_PREFIX) and SECRET_PREFIX == "whsec_"
        raw = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        assert len(raw) == 32
        Webhook(secret)  # accepted by the Standard Webhooks library


# signature_headers with standardwebhooks


PAYLOAD = '{"id":"evt_1","type":"transfer.posted","data":{"amount":1250}}'


def test_headers_signed_with_two_secrets_verify_with_either() -> None:
    current, previous = new_secret(), new_secret()
    now = datetime.now(UTC)
    headers = signature_headers(
        message_id="evt_1", payload=PAYLOAD, secrets=[current, previous], timestamp=now
    )
    assert headers["webhook-id"] == "evt_1"
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert headers["webhook-timestamp"].isdigit()
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert all(s.startswith("v1,") for s in headers["webhook-signature"].split(" "))
    for secret in (current, previous):
        assert Webhook(secret).verify(PAYLOAD, headers) == json.loads(PAYLOAD)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(PAYLOAD, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(current).verify(PAYLOAD.replace("1250", "9999"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(current).verify(PAYLOAD, {**headers, "webhook-id": "evt_2"})


def test_a_signature_ten_minutes_old_is_refused() -> None:
    secret = new_secret()
    headers = signature_headers(
        message_id="evt_1",
        payload=PAYLOAD,
        secrets=[secret],
        timestamp=datetime.now(UTC) - timedelta(minutes=10),
    )
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(PAYLOAD, headers)


def test_headers_verify_whatever_the_timestamps_time_zone() -> None:
    secret = new_secret()
    now = datetime.now(timezone(timedelta(hours=2)))
    headers = signature_headers(
        message_id="evt_1", payload=PAYLOAD, secrets=[secret], timestamp=now
    )
    Webhook(secret).verify(PAYLOAD, headers)


# check_url_syntax


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/ledger",
        "https://hooks.example.com:8443/ledger?x=1#frag",
        "HTTPS://hooks.example.com/",
        "https://[2606:4700::1111]/x",
        "https://a.example/" + "x" * (url_length_max - len("https://a.example/")),
    ],
)
def test_https_urls_are_accepted(url: str) -> None:
    assert check_url_syntax(url, allow_http=False) is None
    assert check_url_syntax(url, allow_http=True) is None


def test_http_only_when_allowed() -> None:
    assert check_url_syntax("http://hooks.example.com/", allow_http=False) == (
        "url_scheme_not_allowed"
    )
    assert check_url_syntax("http://hooks.example.com/", allow_http=True) is None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.com/x",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "gopher://hooks.example.com/",
        "ws://hooks.example.com/",
        "hooks.example.com/ledger",
        "//hooks.example.com/ledger",
        "",
    ],
)
def test_other_schemes_are_refused(url: str) -> None:
    for allow_http in (False, True):
        assert check_url_syntax(url, allow_http=allow_http) == "url_scheme_not_allowed"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://user:pass@hooks.example.com/", "url_invalid"),
        ("https://user@hooks.example.com/", "url_invalid"),
        ("https://:pass@hooks.example.com/", "url_invalid"),
        ("https:///ledger", "url_invalid"),
        ("https://", "url_invalid"),
        ("https://:443/ledger", "url_invalid"),
        ("https://hooks.example.com:99999/", "url_invalid"),
        ("https://hooks.example.com:65536/", "url_invalid"),
        ("https://hooks.example.com:-1/", "url_invalid"),
        ("https://hooks.example.com:abc/", "url_invalid"),
        ("https://[::1/", "url_invalid"),
        ("https://a.example/" + "x" * (url_length_max - len("https://a.example/") + 1), None),
    ],
)
def test_malformed_urls_are_refused(url: str, problem: str | None) -> None:
    expected = problem or "url_too_long"
    assert len(url) <= url_length_max or expected == "url_too_long"
    assert check_url_syntax(url, allow_http=True) == expected


# address_allowed

REFUSED_ALWAYS = [
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "169.254.169.254",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "100.64.0.1",
    "0.0.0.0",
    "::",
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "ff02::1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "2001:db8::1",
]
LOOPBACK = ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"]
PUBLIC = [PUBLIC_V4, "8.8.8.8", "2606:4700::1111", "::ffff:93.184.216.34"]


@pytest.mark.parametrize("address", REFUSED_ALWAYS)
def test_private_and_special_addresses_are_refused(address: str) -> None:
    assert address_allowed_either(address) == (False, False)


@pytest.mark.parametrize("address", LOOPBACK)
def test_loopback_only_in_development(address: str) -> None:
    assert address_allowed_either(address) == (False, True)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_accepted(address: str) -> None:
    assert address_allowed_either(address) == (True, True)


@pytest.mark.parametrize("address", ["64:ff9b::a00:1", "64:ff9b::a9fe:a9fe", "2002:a00:1::"])
def test_ipv6_addresses_embedding_a_private_ipv4_are_refused(address: str) -> None:
    assert address_allowed_either(address) == (False, False)


def address_allowed_either(address: str) -> tuple[bool, bool]:
    return (
        address_allowed(address, allow_loopback=False),
        address_allowed(address, allow_loopback=True),
    )


# AddressGuard


@dataclass
class FakeResolver:
    answers: dict[str, list[str]]
    calls: list[tuple[str, int]] = field(default_factory=list)

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return self.answers[host]


def test_guard_requires_every_resolved_address_to_be_public() -> None:
    resolver = FakeResolver(
        {
            "public.example.com": [PUBLIC_V4, "2606:4700::1111"],
            "mixed.example.com": [PUBLIC_V4, "10.0.0.1"],
            "mixed6.example.com": ["2606:4700::1111", "fe80::1"],
            "empty.example.com": [],
        }
    )
    guard = AddressGuard(development=False, resolver=resolver)
    assert guard.check("https://public.example.com/x") is None
    assert guard.check("https://mixed.example.com/x") == "url_address_not_allowed"
    assert guard.check("https://mixed6.example.com/x") == "url_address_not_allowed"
    assert guard.check("https://empty.example.com/x") == "url_address_not_allowed"
    assert guard.check("https://public.example.com:8443/x") is None
    assert resolver.calls[0] == ("public.example.com", 443)
    assert resolver.calls[-1] == ("public.example.com", 8443)


def test_guard_reports_unresolvable_hosts() -> None:
    def failing(exception: Exception) -> Callable[[str, int], list[str]]:
        def resolve(host: str, port: int) -> list[str]:
            raise exception

        return resolve

    for exception in (OSError("no such host"), UnicodeError("label too long")):
        guard = AddressGuard(development=False, resolver=failing(exception))
        assert guard.check("https://nowhere.example.com/") == "url_host_unresolvable"


def test_guard_checks_syntax_before_resolving() -> None:
    resolver = FakeResolver({})
    guard = AddressGuard(development=False, resolver=resolver)
    assert guard.check("http://hooks.example.com/") == "url_scheme_not_allowed"
    assert guard.check("https://u:p@hooks.example.com/") == "url_invalid"
    assert resolver.calls == []


def test_development_allows_http_loopback_but_not_private_addresses() -> None:
    resolver = FakeResolver({"127.0.0.1": ["127.0.0.1"], "10.0.0.1": ["10.0.0.1"]})
    guard = AddressGuard(development=True, resolver=resolver)
    assert guard.check("http://127.0.0.1:8080/hook") is None
    assert resolver.calls == [("127.0.0.1", 8080)]
    assert guard.check("http://10.0.0.1/hook") == "url_address_not_allowed"
    assert resolver.calls[-1] == ("10.0.0.1", 80)


def test_production_refuses_localhost_and_http() -> None:
    resolver = FakeResolver({"localhost": ["127.0.0.1", "::1"], "127.0.0.1": ["127.0.0.1"]})
    guard = AddressGuard(development=False, resolver=resolver)
    assert guard.check("https://localhost/hook") == "url_address_not_allowed"
    assert guard.check("https://127.0.0.1/hook") == "url_address_not_allowed"
    assert guard.check("http://127.0.0.1:8080/hook") == "url_scheme_not_allowed"


# HttpxSender, with the transport replaced: nothing leaves the process.


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[httpx.Request]:
    """Every request the real client would send, answered by `reply` instead of a socket."""
    sent: list[httpx.Request] = []

    def handle_request(self: PinnedTransport, request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return REPLIES[request.url.path](request)

    monkeypatch.setattr(PinnedTransport, "handle_request", handle_request)
    return sent


def _timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectTimeout("timed out", request=request)


def _refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused", request=request)


REPLIES: dict[str, Callable[[httpx.Request], httpx.Response]] = {
    "/ok": lambda request: httpx.Response(204),
    "/redirect": lambda request: httpx.Response(
        302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}
    ),
    "/error": lambda request: httpx.Response(500, content=b"boom" * 1000),
    "/timeout": _timeout,
    "/refused": _refused,
}


@pytest.fixture
def sender() -> Iterator[HttpxSender]:
    guard = AddressGuard(
        development=False, resolver=FakeResolver({"hooks.example.com": [PUBLIC_V4]})
    )
    made = HttpxSender(Settings(), guard)
    yield made
    made.close()


def send(sender: HttpxSender, url: str, secrets: list[str] | None = None) -> AttemptResult:
    return sender.send(
        url,
        message_id="evt_1",
        payload=PAYLOAD,
        secrets=secrets or [new_secret()],
        timestamp=datetime.now(UTC),
    )


def test_sender_refuses_a_bad_url_before_any_connection(no_network: list[httpx.Request]) -> None:
    sender = HttpxSender(Settings(), AddressGuard(development=False))
    try:
        result = send(sender, "http://127.0.0.1:9/x")
    finally:
        sender.close()
    assert result.status_code is None
    assert result.error == "url_scheme_not_allowed"
    assert result.duration_milliseconds >= 0
    assert no_network == []


def test_sender_refuses_an_address_that_became_private(
    no_network: list[httpx.Request],
) -> None:
    guard = AddressGuard(
        development=False, resolver=FakeResolver({"hooks.example.com": ["10.1.2.3"]})
    )
    sender = HttpxSender(Settings(), guard)
    try:
        result = send(sender, "https://hooks.example.com/ok")
    finally:
        sender.close()
    assert (result.status_code, result.error) == (None, "url_address_not_allowed")
    assert no_network == []


def test_sender_posts_signed_json(sender: HttpxSender, no_network: list[httpx.Request]) -> None:
    secret = new_secret()
    result = send(sender, "https://hooks.example.com/ok", [secret])
    assert (result.status_code, result.error) == (204, None)
    (request,) = no_network
    assert request.method == "POST"
    assert request.content == PAYLOAD.encode()
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("ledger-webhooks/")
    Webhook(secret).verify(request.content, dict(request.headers))


def test_sender_does_not_follow_redirects(
    sender: HttpxSender, no_network: list[httpx.Request]
) -> None:
    result = send(sender, "https://hooks.example.com/redirect")
    assert result.status_code == 302
    assert result.error is not None and result.error.startswith("HTTP 302")
    assert [str(r.url) for r in no_network] == ["https://hooks.example.com/redirect"]
    assert decide(1, result.status_code).status is DeliveryStatus.FAILED


def test_sender_reports_errors_timeouts_and_refusals(
    sender: HttpxSender, no_network: list[httpx.Request]
) -> None:
    error = send(sender, "https://hooks.example.com/error")
    assert error.status_code == 500
    assert error.error is not None and error.error.startswith("HTTP 500: boom")
    assert len(error.error) <= len("HTTP 500: ") + 500
    timeout = send(sender, "https://hooks.example.com/timeout")
    assert (timeout.status_code, timeout.error) == (None, "timeout")
    refused = send(sender, "https://hooks.example.com/refused")
    assert refused.status_code is None
    assert refused.error == "connection_error: ConnectError"


# endpoint_matches


def test_endpoint_matches_filters_by_event_type() -> None:
    posted_only = endpoint(events=[EventType.TRANSFER_POSTED.value])
    assert endpoint_matches(posted_only, "transfer.posted", {"acc_alice"})
    assert not endpoint_matches(posted_only, "transfer.rejected", {"acc_alice"})
    assert not endpoint_matches(endpoint(events=[]), "transfer.posted", {"acc_alice"})


def test_endpoint_matches_filters_by_account() -> None:
    every_account = endpoint(account_ids=None)
    assert endpoint_matches(every_account, "transfer.posted", {"acc_x", "acc_y"})
    assert endpoint_matches(every_account, "transfer.posted", set())
    some = endpoint(account_ids=["acc_alice", "acc_carol"])
    assert endpoint_matches(some, "transfer.posted", {"acc_alice", "acc_bob"})  # source
    assert endpoint_matches(some, "transfer.posted", {"acc_bob", "acc_carol"})  # destination
    assert not endpoint_matches(some, "transfer.posted", {"acc_bob", "acc_dave"})
    assert not endpoint_matches(some, "transfer.rejected", set())
    assert not endpoint_matches(
        endpoint(account_ids=["acc_alice"], events=["transfer.rejected"]),
        "transfer.posted",
        {"acc_alice"},
    )


# event_payload


def test_event_payload_is_the_event_envelope_around_the_transfer() -> None:
    record = transfer()
    now = datetime(2024, 3, 1, 13, 30, 15, 123456, tzinfo=timezone(timedelta(hours=1)))
    payload = event_payload("evt_1", "transfer.posted", now, record)
    body = json.loads(payload)
    assert set(body) == {"id", "type", "timestamp", "data"}
    assert body["id"] == "evt_1"
    assert body["type"] == "transfer.posted"
    assert body["timestamp"] == "2024-03-01T12:30:15.123456Z"
    assert body["timestamp"].endswith("Z")
    assert body["data"] == record.to_json()
    assert event_payload("evt_1", "transfer.posted", now, record) == payload
    assert payload.encode() == event_payload("evt_1", "transfer.posted", now, record).encode()


# The outbox a posting writes, inside the in-memory unit of work


def test_posting_writes_one_event_per_final_transfer_and_one_delivery_per_match() -> None:
    store = FakeStore()
    for account_id, balance in (("acc_alice", 2000), ("acc_bob", 0), ("acc_carol", 0)):
        store.insert_account(account_id, balance=balance)
    store.insert_transfer(transfer(id="tr_posted", status="pending", posted_at=None))
    store.insert_transfer(
        transfer(id="tr_rejected", status="pending", posted_at=None, source_account_id="acc_carol")
    )
    for record in (
        endpoint(id="we_all"),
        endpoint(id="we_bob", account_ids=["acc_bob"]),
        endpoint(id="we_carol_posted", account_ids=["acc_carol"], events=["transfer.posted"]),
        endpoint(id="we_dave", account_ids=["acc_dave"]),
        endpoint(id="we_off", status="disabled"),
    ):
        store.insert_endpoint(record)
    enqueued: list[str] = []
    options = PostingOptions(enqueue_deliveries=enqueued.extend, webhook_requeue_after_seconds=120)
    posting.post_transfers(store, ["tr_posted", "tr_rejected"], clock=lambda: T0, options=options)

    events = store.state.events
    by_transfer = {e.transfer_id: e for e in events.values()}
    assert len(events) == len(by_transfer) == 2
    assert by_transfer["tr_posted"].type == "transfer.posted"
    assert by_transfer["tr_rejected"].type == "transfer.rejected"
    for event in events.values():
        final = store.transfer(event.transfer_id).record()
        assert event.payload == event_payload(event.id, event.type, T0, final)
        assert json.loads(event.payload)["data"]["status"] == final.status
        assert event.created_at == T0

    deliveries = store.state.deliveries
    assert sorted(deliveries) == sorted(enqueued)
    pairs = {(events[d.event_id].transfer_id, d.endpoint_id) for d in deliveries.values()}
    assert pairs == {
        ("tr_posted", "we_all"),
        ("tr_posted", "we_bob"),
        ("tr_rejected", "we_all"),
        ("tr_rejected", "we_bob"),
    }
    for delivery in deliveries.values():
        assert (delivery.status, delivery.attempts) == ("pending", 0)
        assert delivery.next_attempt_at == T0
        assert delivery.created_at == T0
        assert delivery.enqueued_until == T0 + timedelta(seconds=120)


def test_a_transfer_that_is_final_already_gets_no_second_event() -> None:
    store = FakeStore()
    store.insert_account("acc_alice", balance=10)
    store.insert_account("acc_bob")
    store.insert_transfer(transfer(status="pending", posted_at=None, amount=1))
    store.insert_endpoint(endpoint())
    [outcome] = posting.post_transfers(store, ["tr_1"])
    with store() as uow:
        outbox = Outbox(time=T0, requeue_after_seconds=120)
        assert uow.transfers.finalize([outcome], now=T0, outbox=outbox) == []
        uow.commit()
    assert len(store.state.events) == len(store.state.deliveries) == 1


# attempt_delivery, against a recording unit of work and sender


@dataclass(frozen=True)
class Claimed:
    delivery_id: str
    attempts: int
    event_id: str
    payload: str
    endpoint: EndpointRecord
    lease_token: str


class Recorder:
    """Stands in for uow.deliveries and uow.endpoints, recording every call."""

    def __init__(self, claimed: Claimed | None) -> None:
        self.claimed = claimed
        self.calls: list[tuple[str, Any]] = []
        self.commits = 0

    def claim(self, delivery_id: str, *, now: datetime, lease_until: datetime, **_: Any) -> Any:
        self.calls.append(("claim", (delivery_id, now, lease_until)))
        return self.claimed

    def record_attempt(self, delivery_id: str, **kwargs: Any) -> bool:
        self.calls.append(("record_attempt", (delivery_id, kwargs)))
        return True

    def __getattr__(self, name: str) -> Callable[..., None]:
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, (args, kwargs)))

        return record

    def named(self, name: str) -> list[Any]:
        return [arguments for called, arguments in self.calls if called == name]


class RecordingUow:
    def __init__(self, recorder: Recorder) -> None:
        self.deliveries = self.endpoints = recorder
        self._recorder = recorder

    def __enter__(self) -> RecordingUow:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def commit(self) -> None:
        self._recorder.commits += 1


class RecordingSender:
    def __init__(self, status_code: int | None) -> None:
        self.status_code = status_code
        self.calls: list[dict[str, Any]] = []

    def send(self, url: str, **kwargs: Any) -> AttemptResult:
        self.calls.append({"url": url, **kwargs})
        error = None if self.status_code == 200 else "failed"
        return AttemptResult(self.status_code, error, 12)


class SteppingClock:
    """Each call is one second after the previous one: claim time, then finish time."""

    def __init__(self, start: datetime) -> None:
        self.now = start - timedelta(seconds=1)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def run_attempt(claimed: Claimed | None, status_code: int | None) -> Any:
    recorder = Recorder(claimed)
    sender = RecordingSender(status_code)
    status = attempt_delivery(
        lambda: RecordingUow(recorder),
        sender,
        "wd_1",
        schedule=SCHEDULE,
        lease_seconds=40,
        endpoint_concurrency_max=2,
        busy_retry_after_seconds=5,
        clock=SteppingClock(T0),
        jitter=lambda: 0.5,
    )
    return status, recorder, sender


def claimed_with(**changes: Any) -> Claimed:
    return Claimed("wd_1", 3, "evt_1", PAYLOAD, endpoint(**changes), "lease-1")


def test_attempt_signs_with_both_secrets_during_a_rotation_and_retries_on_failure() -> None:
    claimed = claimed_with(
        secret="whsec_new", previous_secret="whsec_old", previous_secret_expires_at=T0
    )
    status, recorder, sender = run_attempt(claimed, 500)
    assert status is DeliveryStatus.FAILED
    (call,) = sender.calls
    assert call["url"] == claimed.endpoint.url
    assert call["message_id"] == "evt_1" and call["payload"] == PAYLOAD
    # Expiry is at T0, and claim time is T0: the old secret no longer signs.
    assert call["secrets"] == ["whsec_new"]
    assert call["timestamp"] == T0
    assert recorder.named("claim") == [("wd_1", T0, T0 + timedelta(seconds=40))]
    ((_, recorded),) = recorder.named("record_attempt")
    finished = T0 + timedelta(seconds=1)
    assert recorded["attempted_at"] == T0
    assert recorded["decision"].next_attempt_at == finished + timedelta(seconds=SCHEDULE[2] * 1.05)
    assert recorder.named("record_failure") == [(("we_1", finished), {})]
    assert recorder.named("record_success") == []
    assert recorder.named("update") == []

    during = claimed_with(
        secret="whsec_new",
        previous_secret="whsec_old",
        previous_secret_expires_at=T0 + timedelta(seconds=1),
    )
    _, _, sender = run_attempt(during, 200)
    assert sender.calls[0]["secrets"] == ["whsec_new", "whsec_old"]


def test_attempt_success_is_recorded() -> None:
    status, recorder, _ = run_attempt(claimed_with(), 200)
    assert status is DeliveryStatus.SUCCEEDED
    assert recorder.named("record_success") == [(("we_1", T0 + timedelta(seconds=1)), {})]
    assert recorder.named("record_failure") == []


def test_attempt_410_disables_the_endpoint_and_abandons_its_deliveries() -> None:
    status, recorder, _ = run_attempt(claimed_with(), 410)
    assert status is DeliveryStatus.ABANDONED
    assert recorder.named("disable") == [(("we_1",), {"reason": "gone"})]
    assert recorder.named("abandon_for_endpoint") == [(("we_1",), {"error": "endpoint_disabled"})]


def test_attempt_for_a_disabled_endpoint_abandons_without_sending() -> None:
    status, recorder, sender = run_attempt(claimed_with(status="disabled"), 200)
    assert status is DeliveryStatus.ABANDONED
    assert sender.calls == []
    assert recorder.named("abandon") == [(("wd_1",), {"error": "endpoint_disabled"})]
    assert recorder.commits == 1


def test_attempt_does_nothing_when_not_claimed() -> None:
    status, recorder, sender = run_attempt(None, 200)
    assert status is None
    assert sender.calls == []
    assert [name for name, _ in recorder.calls] == ["claim"]
