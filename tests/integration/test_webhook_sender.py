"""The webhook sender against real loopback servers: an attempt ends at its deadline however
slowly the receiver trickles, a DNS lookup is bounded, the connection goes to the address
the guard checked (the host is never resolved again), TLS still verifies the certificate
against the host name and sends it as SNI, and proxy settings of the environment are
ignored."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import trustme
from standardwebhooks import Webhook

from ledger_core.adapters.webhook_http import AddressGuard, HttpxSender
from ledger_core.config import Settings
from ledger_core.domain.webhooks import new_secret
from ledger_core.service_layer.ports import AttemptResult
from tests.support.receiver import Receiver, SocketServer, start_blackhole, start_trickler

DEADLINE_SECONDS = 1.5
DNS_TIMEOUT_SECONDS = 0.3
# Past the deadline: the time to notice it, close the connection and return.
DEADLINE_SLACK_SECONDS = 0.75
# A name no resolver answers (RFC 6761): only the guard's resolver knows it.
UNRESOLVABLE_HOST = "hooks.rebind.invalid"
PAYLOAD = '{"id":"evt_1","type":"transfer.posted"}'


class Resolver:
    """The guard's DNS: answers from a table and counts the lookups."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return self.answers[host]


def make_sender(
    resolver: Any, *, ssl_context: ssl.SSLContext | None = None
) -> tuple[HttpxSender, AddressGuard]:
    settings = Settings(
        webhook_timeout_seconds=DEADLINE_SECONDS,
        webhook_connect_timeout_seconds=1.0,
        webhook_dns_timeout_seconds=DNS_TIMEOUT_SECONDS,
    )
    guard = AddressGuard(
        development=True, resolver=resolver, dns_timeout_seconds=DNS_TIMEOUT_SECONDS
    )
    return HttpxSender(settings, guard, ssl_context=ssl_context), guard


def send(sender: HttpxSender, url: str, secret: str | None = None) -> AttemptResult:
    return sender.send(
        url,
        message_id="evt_1",
        payload=PAYLOAD,
        secrets=[secret or new_secret()],
        timestamp=datetime.now(UTC),
    )


@pytest.fixture
def sender_of() -> Iterator[Any]:
    made: list[HttpxSender] = []

    def build(resolver: Any, **kwargs: Any) -> HttpxSender:
        sender, _ = make_sender(resolver, **kwargs)
        made.append(sender)
        return sender

    yield build
    for sender in made:
        sender.close()


@pytest.fixture
def servers() -> Iterator[list[SocketServer]]:
    started: list[SocketServer] = []
    yield started
    for server in started:
        server.stop()


HEADERS = b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n"


@pytest.mark.parametrize(
    "at_once_bytes", [0, len(HEADERS)], ids=["status-line-trickled", "body-trickled"]
)
def test_a_trickling_receiver_is_cut_at_the_deadline(
    sender_of: Any, servers: list[SocketServer], at_once_bytes: int
) -> None:
    # Every read gets a byte well within any per-read timeout; only a total deadline ends
    # the attempt before the half a minute the whole answer would take. A 2xx whose body
    # is still trickling is not a success either: the attempt did not finish in time.
    trickler = start_trickler(0.4, HEADERS + b"x" * 40, at_once_bytes=at_once_bytes)
    servers.append(trickler)
    sender = sender_of(Resolver({"127.0.0.1": ["127.0.0.1"]}))
    started = time.monotonic()
    result = send(sender, trickler.url("/slow"))
    elapsed = time.monotonic() - started
    assert (result.status_code, result.error) == (None, "timeout")
    assert DEADLINE_SECONDS - 0.1 <= elapsed <= DEADLINE_SECONDS + DEADLINE_SLACK_SECONDS
    assert result.duration_milliseconds <= (DEADLINE_SECONDS + DEADLINE_SLACK_SECONDS) * 1000


def test_a_receiver_that_never_answers_is_cut_at_the_deadline(
    sender_of: Any, servers: list[SocketServer]
) -> None:
    blackhole = start_blackhole()
    servers.append(blackhole)
    started = time.monotonic()
    result = send(sender_of(Resolver({"127.0.0.1": ["127.0.0.1"]})), blackhole.url("/x"))
    assert (result.status_code, result.error) == (None, "timeout")
    assert time.monotonic() - started <= DEADLINE_SECONDS + DEADLINE_SLACK_SECONDS


def test_a_slow_dns_lookup_is_a_timeout_within_the_dns_timeout(sender_of: Any) -> None:
    release = threading.Event()

    def stuck(host: str, port: int) -> list[str]:
        release.wait(10)  # a resolver that hangs (bounded, so the thread ends)
        return ["127.0.0.1"]

    try:
        sender, guard = make_sender(stuck)
        started = time.monotonic()
        result = send(sender, "http://slow-dns.example/x")
        assert (result.status_code, result.error) == (None, "timeout")
        assert time.monotonic() - started <= DNS_TIMEOUT_SECONDS + 0.5
        started = time.monotonic()
        # At registration the API says why, as fast.
        assert guard.check("http://slow-dns.example/x") == "url_host_unresolvable"
        assert time.monotonic() - started <= DNS_TIMEOUT_SECONDS + 0.5
        sender.close()
    finally:
        release.set()


def test_the_connection_goes_to_the_checked_address_without_resolving_again(
    sender_of: Any, receiver: Receiver
) -> None:
    # httpx resolving the name itself (as before the fix) fails: no resolver knows it.
    resolver = Resolver({UNRESOLVABLE_HOST: ["127.0.0.1"]})
    sender = sender_of(resolver)
    secret = new_secret()
    url = f"http://{UNRESOLVABLE_HOST}:{receiver.port}/pinned"
    for _ in range(2):
        result = send(sender, url, secret)
        assert (result.status_code, result.error) == (200, None)
    got = receiver.requests_to("/pinned")
    assert len(got) == 2
    assert got[0].headers["Host"] == f"{UNRESOLVABLE_HOST}:{receiver.port}"
    Webhook(secret).verify(got[0].body, got[0].headers)
    # One lookup per attempt, the guard's: what it checked is what was connected to.
    assert resolver.calls == [UNRESOLVABLE_HOST, UNRESOLVABLE_HOST]


def test_an_answer_that_became_private_is_refused_even_with_a_pooled_connection(
    sender_of: Any, receiver: Receiver
) -> None:
    resolver = Resolver({UNRESOLVABLE_HOST: ["127.0.0.1"]})
    sender = sender_of(resolver)
    url = f"http://{UNRESOLVABLE_HOST}:{receiver.port}/rebound"
    assert send(sender, url).status_code == 200
    resolver.answers[UNRESOLVABLE_HOST] = ["10.0.0.7"]  # the rebinding answer
    assert send(sender, url).error == "url_address_not_allowed"
    assert len(receiver.requests_to("/rebound")) == 1


class _TlsReceiver:
    """HTTPS on loopback with a certificate for `hostname`; records the SNI it was sent."""

    def __init__(self, ca: trustme.CA, hostname: str) -> None:
        self.server_names: list[str | None] = []
        self.requests = 0
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(hostname).configure_cert(context)
        context.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.requests += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def test_tls_to_the_pinned_address_verifies_the_host_name_and_sends_it_as_sni(
    sender_of: Any, ca: trustme.CA, client_context: ssl.SSLContext
) -> None:
    receiver = _TlsReceiver(ca, "hooks.test")
    try:
        sender = sender_of(Resolver({"hooks.test": ["127.0.0.1"]}), ssl_context=client_context)
        result = send(sender, f"https://hooks.test:{receiver.port}/tls")
        assert (result.status_code, result.error) == (204, None)
        assert receiver.server_names == ["hooks.test"]
        assert receiver.requests == 1
    finally:
        receiver.stop()


def test_a_certificate_for_another_name_is_refused(
    sender_of: Any, ca: trustme.CA, client_context: ssl.SSLContext
) -> None:
    receiver = _TlsReceiver(ca, "other.test")
    try:
        sender = sender_of(Resolver({"hooks.test": ["127.0.0.1"]}), ssl_context=client_context)
        result = send(sender, f"https://hooks.test:{receiver.port}/tls")
        assert result.status_code is None
        assert result.error == "connection_error: ConnectError"
        assert receiver.requests == 0
    finally:
        receiver.stop()


def test_proxy_settings_of_the_environment_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
    sender_of: Any,
    receiver: Receiver,
    servers: list[SocketServer],
) -> None:
    proxy = start_blackhole()
    servers.append(proxy)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, proxy.url(""))
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    sender = sender_of(Resolver({UNRESOLVABLE_HOST: ["127.0.0.1"]}))
    result = send(sender, f"http://{UNRESOLVABLE_HOST}:{receiver.port}/direct")
    assert (result.status_code, result.error) == (200, None)
    assert len(receiver.requests_to("/direct")) == 1
    assert proxy.accepted == 0
