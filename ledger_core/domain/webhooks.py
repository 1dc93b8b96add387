"""Webhook rules: event types, the retry schedule, endpoint health, secrets and URLs.

Pure functions of their inputs (time and randomness are passed in), so the schedule is
tested with an injected clock rather than real minutes.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit

from ledger_core.domain.model import TransferKind, TransferStatus
from ledger_core.domain.movement_records import TransactionRecord
from ledger_core.domain.records import EndpointRecord, TransferRecord, iso_utc


class EventType(StrEnum):
    TRANSFER_POSTED = "transfer.posted"
    TRANSFER_REJECTED = "transfer.rejected"
    TRANSACTION_POSTED = "transaction.posted"
    TRANSACTION_REJECTED = "transaction.rejected"
    PAYMENT_POSTED = "payment.posted"
    PAYMENT_REJECTED = "payment.rejected"
    HOLD_CREATED = "hold.created"
    HOLD_REJECTED = "hold.rejected"
    HOLD_CAPTURED = "hold.captured"
    HOLD_VOIDED = "hold.voided"
    HOLD_EXPIRED = "hold.expired"
    # A capture, void or expiry that came too late (another action settled the hold).
    HOLD_ACTION_REJECTED = "hold.action_rejected"
    CASHBACK_POSTED = "cashback.posted"
    CASHBACK_REJECTED = "cashback.rejected"
    TRANSFER_REVERSED = "transfer.reversed"
    REVERSAL_REJECTED = "transfer.reversal_rejected"


_POSTED, _REJECTED = TransferStatus.POSTED.value, TransferStatus.REJECTED.value
# The event each movement sends when it is final, by its kind and its status: one event
# per movement. The posting statement turns this table into SQL (sql_transfers.py).
EVENT_TYPES: Final[dict[tuple[str, str], EventType]] = {
    **{
        (kind.value, _POSTED): EventType.TRANSFER_POSTED
        for kind in (TransferKind.DEPOSIT, TransferKind.WITHDRAWAL, TransferKind.TRANSFER)
    },
    **{
        (kind.value, _REJECTED): EventType.TRANSFER_REJECTED
        for kind in (TransferKind.DEPOSIT, TransferKind.WITHDRAWAL, TransferKind.TRANSFER)
    },
    (TransferKind.TRANSACTION.value, _POSTED): EventType.TRANSACTION_POSTED,
    (TransferKind.TRANSACTION.value, _REJECTED): EventType.TRANSACTION_REJECTED,
    (TransferKind.PAYMENT.value, _POSTED): EventType.PAYMENT_POSTED,
    (TransferKind.PAYMENT.value, _REJECTED): EventType.PAYMENT_REJECTED,
    (TransferKind.HOLD.value, _POSTED): EventType.HOLD_CREATED,
    (TransferKind.HOLD.value, _REJECTED): EventType.HOLD_REJECTED,
    (TransferKind.CAPTURE.value, _POSTED): EventType.HOLD_CAPTURED,
    (TransferKind.CAPTURE.value, _REJECTED): EventType.HOLD_ACTION_REJECTED,
    (TransferKind.VOID.value, _POSTED): EventType.HOLD_VOIDED,
    (TransferKind.VOID.value, _REJECTED): EventType.HOLD_ACTION_REJECTED,
    (TransferKind.EXPIRE.value, _POSTED): EventType.HOLD_EXPIRED,
    (TransferKind.EXPIRE.value, _REJECTED): EventType.HOLD_ACTION_REJECTED,
    (TransferKind.CASHBACK.value, _POSTED): EventType.CASHBACK_POSTED,
    (TransferKind.CASHBACK.value, _REJECTED): EventType.CASHBACK_REJECTED,
    (TransferKind.REVERSAL.value, _POSTED): EventType.TRANSFER_REVERSED,
    (TransferKind.REVERSAL.value, _REJECTED): EventType.REVERSAL_REJECTED,
}


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # not attempted yet
    FAILED = "failed"  # last attempt failed; another is scheduled
    SUCCEEDED = "succeeded"
    ABANDONED = "abandoned"  # no attempt left (or the endpoint is disabled); retry by hand


class EndpointStatus(StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"


# How a delivery task ends, as ledger_webhook_attempts_total counts it: the delivery's
# status after an attempt, or why no attempt was made (endpoint disabled, or at its
# concurrency cap) or why its outcome was dropped (the lease passed to another worker).
ATTEMPT_OUTCOMES: Final = (
    DeliveryStatus.SUCCEEDED.value,
    DeliveryStatus.FAILED.value,
    DeliveryStatus.ABANDONED.value,
    "endpoint_disabled",
    "endpoint_busy",
    "lease_lost",
)


# About three days in all: 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 3 h, 6 h, 12 h, 24 h, 24 h.
DEFAULT_RETRY_SCHEDULE_SECONDS: Final = (
    5, 30, 120, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600, 24 * 3600,
)  # fmt: skip
retry_jitter_fraction: Final = 0.1
endpoint_failing_disable_after_seconds: Final = 5 * 24 * 3600
secret_rotation_overlap_seconds: Final = 24 * 3600
secret_size_bytes: Final = 32
SECRET_PREFIX: Final = "whsec_"  # noqa: S105 (the Standard Webhooks prefix, not a secret)
url_length_max: Final = 2048


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(secret_size_bytes)).decode()


def retry_delay_seconds(
    attempts_made: int, schedule: tuple[float, ...], jitter: float
) -> float | None:
    """Delay before the next attempt after `attempts_made` failures, or None when done.

    `jitter` is a number in [-1, 1] (random in production) that spreads retries by up
    to `retry_jitter_fraction` so that endpoints recovering together are not stampeded.
    """
    if attempts_made < 1 or attempts_made > len(schedule):
        return None
    return schedule[attempts_made - 1] * (1 + retry_jitter_fraction * jitter)


@dataclass(frozen=True, slots=True)
class AttemptDecision:
    status: DeliveryStatus
    next_attempt_at: datetime | None
    # Set when the endpoint must be disabled, with the reason.
    disable_endpoint: str | None = None


def decide_after_attempt(
    *,
    attempts_made: int,
    status_code: int | None,
    now: datetime,
    failing_since: datetime | None,
    schedule: tuple[float, ...],
    jitter: float,
) -> AttemptDecision:
    """What a delivery and its endpoint become after one attempt.

    2xx is success. 410 Gone disables the endpoint. An endpoint that has failed without
    a single success for five days is disabled. Otherwise retry on schedule, then abandon.
    """
    if status_code is not None and 200 <= status_code < 300:
        return AttemptDecision(DeliveryStatus.SUCCEEDED, None)
    if status_code == 410:
        return AttemptDecision(DeliveryStatus.ABANDONED, None, disable_endpoint="gone")
    if failing_since is not None and (now - failing_since) >= timedelta(
        seconds=endpoint_failing_disable_after_seconds
    ):
        return AttemptDecision(DeliveryStatus.ABANDONED, None, disable_endpoint="failing")
    delay = retry_delay_seconds(attempts_made, schedule, jitter)
    if delay is None:
        return AttemptDecision(DeliveryStatus.ABANDONED, None)
    return AttemptDecision(DeliveryStatus.FAILED, now + timedelta(seconds=delay))


def signing_secrets(
    secret: str, previous_secret: str | None, previous_expires_at: datetime | None, now: datetime
) -> list[str]:
    """The secrets to sign with at `now`: the current one, plus the previous one while
    its overlap after a rotation lasts."""
    if previous_secret and previous_expires_at is not None and now < previous_expires_at:
        return [secret, previous_secret]
    return [secret]


def check_url_syntax(url: str, *, allow_http: bool) -> str | None:
    """Why a webhook URL is refused before any DNS lookup, or None."""
    if len(url) > url_length_max:
        return "url_too_long"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return "url_invalid"
    allowed_schemes = {"https", "http"} if allow_http else {"https"}
    if parts.scheme not in allowed_schemes:
        return "url_scheme_not_allowed"
    if not parts.hostname or parts.username or parts.password:
        return "url_invalid"
    return None


def address_allowed(address: str, *, allow_loopback: bool) -> bool:
    """Only public addresses, so a webhook cannot be aimed at our own network (SSRF);
    loopback too in the development setting, for a receiver on the same machine."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = embedded_ipv4(ip)
        if embedded:
            # An IPv6 form of an IPv4 address (mapped, compatible, SIIT, NAT64, 6to4,
            # Teredo) may reach that IPv4 address: judge every one it carries.
            return all(address_allowed(str(v4), allow_loopback=allow_loopback) for v4 in embedded)
        if ip.is_loopback:
            return allow_loopback
        # Python's is_global knows the IANA registry of its release only; these are not
        # public whatever it says, and nothing outside global unicast (2000::/3) is.
        if ip not in IPV6_GLOBAL_UNICAST or any(ip in net for net in IPV6_NEVER_PUBLIC):
            return False
    if ip.is_loopback:
        return allow_loopback
    return ip.is_global and not ip.is_multicast


NAT64_WELL_KNOWN_PREFIX: Final = ipaddress.IPv6Network("64:ff9b::/96")
# ::a.b.c.d, deprecated (RFC 4291) but still routed to a.b.c.d by some stacks; :: and ::1
# are the unspecified and loopback addresses, not IPv4 forms.
IPV4_COMPATIBLE_PREFIX: Final = ipaddress.IPv6Network("::/96")
# ::ffff:0:a.b.c.d, the IPv4-translated form of SIIT (RFC 7915).
SIIT_TRANSLATED_PREFIX: Final = ipaddress.IPv6Network("::ffff:0:0:0/96")
IPV6_GLOBAL_UNICAST: Final = ipaddress.IPv6Network("2000::/3")
IPV6_NEVER_PUBLIC: Final = (
    # Local-use NAT64 (RFC 8215): translated into whatever IPv4 network the operator
    # chose, where the embedded address sits at a position that depends on its prefix.
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    # Site-local (RFC 3879): deprecated, but a stack may still route it inside the site.
    ipaddress.IPv6Network("fec0::/10"),
    # Documentation (RFC 3849, RFC 9637), inside 2000::/3.
    ipaddress.IPv6Network("2001:db8::/32"),
    ipaddress.IPv6Network("3fff::/20"),
)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries and may be delivered to."""
    found: list[ipaddress.IPv4Address] = []
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip in IPV4_COMPATIBLE_PREFIX and int(ip) > 1:
        found.append(low32)
    if ip in SIIT_TRANSLATED_PREFIX or ip in NAT64_WELL_KNOWN_PREFIX:
        found.append(low32)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def endpoint_matches(endpoint: EndpointRecord, event_type: str, account_ids: set[str]) -> bool:
    """Whether an endpoint receives an event. The posting statement does this in SQL
    (sql_transfers.FINALIZE); this is the reference its tests hold it to."""
    if event_type not in endpoint.events:
        return False
    return endpoint.account_ids is None or bool(account_ids & set(endpoint.account_ids))


def event_payload(event_id: str, event_type: str, now: datetime, transfer: TransferRecord) -> str:
    """The bytes every attempt of an event sends and signs. Built in SQL by the posting
    statement from the final row; this is the reference its tests hold it to."""
    return json.dumps(
        {"id": event_id, "type": event_type, "timestamp": iso_utc(now), "data": transfer.to_json()},
        separators=(",", ":"),
    )


EVENT_PREFIX: Final = "evt"


def transaction_event_payload(
    event_id: str, event_type: str, now: datetime, movement: TransactionRecord
) -> str:
    """The payload of an event about any movement but a two-account transfer, built by
    the posting worker."""
    return json.dumps(
        {"id": event_id, "type": event_type, "timestamp": iso_utc(now), "data": movement.to_json()},
        separators=(",", ":"),
    )
