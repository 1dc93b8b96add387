"""Sending webhooks over HTTP: address checks, Standard Webhooks signatures, httpx.

One pooled client per worker process. Every attempt is bounded in total: the DNS lookup
has its own timeout, and connecting, TLS, sending and every read share one deadline that
each socket operation is held to, so a receiver trickling a byte at a time is cut at it.
The connection goes to an address the guard checked, never to a second DNS answer (DNS
rebinding), while TLS still sends the URL's host name (SNI) and verifies the certificate
against it. Redirects are not followed, proxy settings of the environment are ignored,
response bodies are capped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from standardwebhooks import Webhook

from ledger_core.config import Settings
from ledger_core.domain.webhooks import address_allowed, check_url_syntax
from ledger_core.service_layer.ports import AttemptResult

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], list[str]]
user_agent = "ledger-webhooks/1"
error_text_length_max = 500
# getaddrinfo cannot be given a timeout: lookups run on these threads and are waited for
# at most the DNS timeout. A lookup stuck past it keeps its thread until the system
# resolver gives up; with all of them stuck, later lookups time out waiting for one.
dns_lookup_threads_max = 4
dns_timeout_seconds_default = 2.0
pool_connections_max = 20
pool_keepalive_connections_max = 10
pool_keepalive_expiry_seconds = 5.0


def resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return sorted({str(info[4][0]) for info in infos})


class DnsTimeoutError(Exception):
    """The host's addresses were not known within the DNS timeout."""


@dataclass(frozen=True, slots=True)
class CheckedUrl:
    host: str
    port: int
    # Every address the host resolved to, each one allowed: the only ones to connect to.
    addresses: list[str]


class AddressGuard:
    """Refuses URLs whose host resolves to a non-public address (checked at registration
    and again before every send, since DNS answers change); the sender then connects to
    the addresses it checked."""

    def __init__(
        self,
        *,
        development: bool,
        resolver: Resolver = resolve,
        dns_timeout_seconds: float = dns_timeout_seconds_default,
    ) -> None:
        self._development = development
        self._resolver = resolver
        self._dns_timeout_seconds = dns_timeout_seconds
        self._pid = -1
        self._lookups: ThreadPoolExecutor | None = None

    def check(self, url: str) -> str | None:
        try:
            checked = self.checked(url, timeout_seconds=self._dns_timeout_seconds)
        except DnsTimeoutError:
            return "url_host_unresolvable"
        return checked if isinstance(checked, str) else None

    def checked(self, url: str, *, timeout_seconds: float) -> CheckedUrl | str:
        """The URL's host, port and allowed addresses, or why it is refused. Raises
        DnsTimeoutError when the lookup takes longer than `timeout_seconds`."""
        problem = check_url_syntax(url, allow_http=self._development)
        if problem is not None:
            return problem
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = self._lookup(host, port, min(timeout_seconds, self._dns_timeout_seconds))
        except (OSError, UnicodeError):
            return "url_host_unresolvable"
        if not addresses or not all(
            address_allowed(a, allow_loopback=self._development) for a in addresses
        ):
            return "url_address_not_allowed"
        return CheckedUrl(host, port, addresses)

    def _lookup(self, host: str, port: int, timeout_seconds: float) -> list[str]:
        if timeout_seconds <= 0:
            raise DnsTimeoutError(host)
        if self._lookups is None or self._pid != os.getpid():
            # Made in the process that uses it: threads do not survive a fork (Celery's
            # prefork pool, gunicorn), and an executor inherited without them never runs.
            self._lookups = ThreadPoolExecutor(
                dns_lookup_threads_max, thread_name_prefix="webhook-dns"
            )
            self._pid = os.getpid()
        future = self._lookups.submit(self._resolver, host, port)
        try:
            return future.result(timeout=timeout_seconds)
        except FutureTimeoutError as error:
            future.cancel()
            raise DnsTimeoutError(host) from error


def signature_headers(
    *, message_id: str, payload: str, secrets: list[str], timestamp: datetime
) -> dict[str, str]:
    """Standard Webhooks headers; one signature per secret, space-separated."""
    # standardwebhooks reads the time as UTC whatever its zone: hand it UTC.
    timestamp = timestamp.astimezone(UTC)
    signatures = [
        Webhook(secret).sign(msg_id=message_id, timestamp=timestamp, data=payload)
        for secret in secrets
    ]
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": " ".join(signatures),
    }


class _Attempt(threading.local):
    """The attempt this thread is making: the addresses checked for its URL, and its
    deadline (time.monotonic()). Outside an attempt nothing may connect."""

    addresses: list[str] | None = None
    deadline: float | None = None

    @contextlib.contextmanager
    def running(self, addresses: list[str], deadline: float) -> Iterator[None]:
        self.addresses, self.deadline = addresses, deadline
        try:
            yield
        finally:
            self.addresses, self.deadline = None, None

    def timeout(self, timeout: float | None, expired: type[Exception]) -> float | None:
        """What is left of the deadline, if less than `timeout`; `expired` once past it."""
        if self.deadline is None:
            return timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise expired("the attempt's deadline passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation ends by the current attempt's deadline. Python
    bounds the whole of one socket call by its timeout (sendall, a TLS handshake or read
    included), and each call gets what is left: the sum cannot pass the deadline."""

    def __init__(self, inner: httpcore.NetworkStream, attempt: _Attempt) -> None:
        self._inner = inner
        self._attempt = attempt

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._attempt.timeout(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._attempt.timeout(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        bounded = self._attempt.timeout(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, bounded), self._attempt
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to the addresses the guard checked for the current attempt, whatever the
    host name: the name is never resolved a second time. TLS above still uses the name."""

    def __init__(self, attempt: _Attempt) -> None:
        self._attempt = attempt
        self._sockets = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self._attempt.addresses
        if not addresses:
            raise httpcore.ConnectError(f"no checked address to reach {host}")
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                stream = self._sockets.connect_tcp(
                    address,
                    port,
                    timeout=self._attempt.timeout(timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as error:
                failure = error
                continue
            return _DeadlineStream(stream, self._attempt)
        assert failure is not None, "at least one address was tried"
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks are sent over TCP only")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    """httpcore's exceptions as httpx's (the same names), as httpx's own transport does."""
    try:
        yield
    except httpcore.TimeoutException as error:
        mapped = getattr(httpx, type(error).__name__, httpx.TimeoutException)
        raise mapped(str(error)) from error
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as error:
        mapped = getattr(httpx, type(error).__name__, httpx.TransportError)
        raise mapped(str(error)) from error


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors():
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            with _as_httpx_errors():
                close()


class PinnedTransport(httpx.BaseTransport):
    """httpx's transport over an httpcore pool whose network backend is _PinnedBackend."""

    def __init__(self, ssl_context: ssl.SSLContext, attempt: _Attempt) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=pool_connections_max,
            max_keepalive_connections=pool_keepalive_connections_max,
            keepalive_expiry=pool_keepalive_expiry_seconds,
            # One attempt, one try: a retry is the schedule's business.
            retries=0,
            network_backend=_PinnedBackend(attempt),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = self._pool.handle_request(core_request)
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


class HttpxSender:
    def __init__(
        self, settings: Settings, guard: AddressGuard, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._guard = guard
        self._total_seconds = settings.webhook_timeout_seconds
        self._dns_timeout_seconds = settings.webhook_dns_timeout_seconds
        self._body_max_bytes = settings.webhook_response_body_size_max_bytes
        self._attempt = _Attempt()
        # Certificates verified against certifi's roots, whatever SSL_CERT_FILE says.
        context = ssl_context or httpx.create_ssl_context(trust_env=False)
        self._client = httpx.Client(
            transport=PinnedTransport(context, self._attempt),
            # HTTP(S)_PROXY and friends would send the request (and its address check)
            # through another host: ignored, as are .netrc credentials.
            trust_env=False,
            follow_redirects=False,
            # Per operation; the attempt's deadline bounds them all together.
            timeout=httpx.Timeout(
                self._total_seconds, connect=settings.webhook_connect_timeout_seconds
            ),
            headers={"User-Agent": user_agent, "Content-Type": "application/json"},
        )

    def close(self) -> None:
        self._client.close()

    def send(
        self, url: str, *, message_id: str, payload: str, secrets: list[str], timestamp: datetime
    ) -> AttemptResult:
        started = time.monotonic()
        deadline = started + self._total_seconds

        def elapsed_ms() -> int:
            return int((time.monotonic() - started) * 1000)

        try:
            # Within the attempt's deadline, whatever the two settings say.
            dns_timeout = min(self._dns_timeout_seconds, self._total_seconds)
            checked = self._guard.checked(url, timeout_seconds=dns_timeout)
        except DnsTimeoutError:
            return AttemptResult(None, "timeout", elapsed_ms())
        if isinstance(checked, str):
            return AttemptResult(None, checked, elapsed_ms())
        headers = signature_headers(
            message_id=message_id, payload=payload, secrets=secrets, timestamp=timestamp
        )
        try:
            with (
                self._attempt.running(checked.addresses, deadline),
                self._client.stream("POST", url, content=payload, headers=headers) as response,
            ):
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) >= self._body_max_bytes:
                        break
        except httpx.TimeoutException:
            return AttemptResult(None, "timeout", elapsed_ms())
        except httpx.HTTPError as error:
            return AttemptResult(None, f"connection_error: {type(error).__name__}", elapsed_ms())
        if 200 <= response.status_code < 300:
            return AttemptResult(response.status_code, None, elapsed_ms())
        snippet = bytes(body[:error_text_length_max]).decode(errors="replace")
        return AttemptResult(
            response.status_code, f"HTTP {response.status_code}: {snippet}", elapsed_ms()
        )
