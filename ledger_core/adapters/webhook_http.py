"""Sending webhooks over HTTP: address checks, Standard Webhooks signatures, httpx.

One pooled client per worker process, explicit connect and total timeouts, redirects
not followed (a redirect could point inside our network), response bodies capped.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from ledger_core.config import Settings
from ledger_core.domain.webhooks import address_allowed, check_url_syntax

Resolver = Callable[[str, int], list[str]]
user_agent = "ledger-webhooks/1"
error_text_length_max = 500


def resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return sorted({str(info[4][0]) for info in infos})


class AddressGuard:
    """Refuses URLs whose host resolves to a non-public address (checked at registration
    and again before every send, since DNS answers change)."""

    def __init__(self, *, development: bool, resolver: Resolver = resolve) -> None:
        self._development = development
        self._resolver = resolver

    def check(self, url: str) -> str | None:
        problem = check_url_syntax(url, allow_http=self._development)
        if problem is not None:
            return problem
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = self._resolver(parts.hostname or "", port)
        except (OSError, UnicodeError):
            return "url_host_unresolvable"
        if not addresses or not all(
            address_allowed(a, allow_loopback=self._development) for a in addresses
        ):
            return "url_address_not_allowed"
        return None


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


@dataclass(frozen=True, slots=True)
class AttemptResult:
    status_code: int | None
    error: str | None
    duration_milliseconds: int


class HttpxSender:
    def __init__(self, settings: Settings, guard: AddressGuard) -> None:
        self._guard = guard
        self._total_seconds = settings.webhook_timeout_seconds
        self._body_max_bytes = settings.webhook_response_body_size_max_bytes
        self._client = httpx.Client(
            follow_redirects=False,
            timeout=httpx.Timeout(
                self._total_seconds, connect=settings.webhook_connect_timeout_seconds
            ),
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
            headers={"User-Agent": user_agent, "Content-Type": "application/json"},
        )

    def close(self) -> None:
        self._client.close()

    def send(
        self, url: str, *, message_id: str, payload: str, secrets: list[str], timestamp: datetime
    ) -> AttemptResult:
        started = time.monotonic()

        def elapsed_ms() -> int:
            return int((time.monotonic() - started) * 1000)

        problem = self._guard.check(url)
        if problem is not None:
            return AttemptResult(None, problem, elapsed_ms())
        headers = signature_headers(
            message_id=message_id, payload=payload, secrets=secrets, timestamp=timestamp
        )
        deadline = started + self._total_seconds
        try:
            with self._client.stream("POST", url, content=payload, headers=headers) as response:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    # Cap what we read and how long we read it: a receiver cannot keep
                    # a worker busy by streaming slowly or endlessly.
                    if len(body) >= self._body_max_bytes or time.monotonic() > deadline:
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
