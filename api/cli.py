"""`ledger` console script: operator commands that need no HTTP."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import click

from ledger_core.adapters.database import make_engine
from ledger_core.adapters.sql import SqlUnitOfWorkFactory
from ledger_core.config import Settings
from ledger_core.domain import limits
from ledger_core.domain.access import Scope, owner_is_valid
from ledger_core.service_layer.access import (
    add_custom_currency,
    create_api_key,
    list_api_keys,
    revoke_api_key,
)
from ledger_core.service_layer.posting import reject_quarantined, release_quarantined
from ledger_core.service_layer.reconcile import reconcile, report


def _uow_factory() -> SqlUnitOfWorkFactory:
    return SqlUnitOfWorkFactory(make_engine(Settings()))


@click.group()
def main() -> None:
    """Operate the ledger. Reads DATABASE_URL."""


@main.group("api-keys")
def api_keys() -> None:
    """Manage API keys."""


def _owner(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not owner_is_valid(value):
        raise click.BadParameter(
            f"1 to {limits.api_key_owner_length_max} printable characters", ctx, param
        )
    return value


@api_keys.command("create")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option(
    "--scope",
    type=click.Choice([s.value for s in Scope]),
    default=Scope.READ.value,
    show_default=True,
)
@click.option(
    "--owner",
    callback=_owner,
    help="Whose accounts a write key may debit: keys of one owner share the accounts they"
    " open (give a rotated key its predecessor's owner). Default: the new key's own id.",
)
@click.option(
    "--expires-in-days",
    type=click.IntRange(1, limits.api_key_expires_in_days_max),
    help="Refuse the key after this many days. Default: it does not expire.",
)
def api_keys_create(name: str, scope: str, owner: str | None, expires_in_days: int | None) -> None:
    """Create a key and print it, alone, on stdout. It is not shown again."""
    expires_at = (
        None if expires_in_days is None else datetime.now(UTC) + timedelta(days=expires_in_days)
    )
    key_id, secret = create_api_key(
        _uow_factory(), name=name, scope=Scope(scope), owner=owner, expires_at=expires_at
    )
    until = "" if expires_at is None else f", expires {expires_at:%Y-%m-%dT%H:%M:%SZ}"
    click.echo(f"created {key_id} ({scope}, owner {owner or key_id}{until}) for {name!r}", err=True)
    click.echo(secret)


@api_keys.command("revoke")
@click.argument("key_id")
def api_keys_revoke(key_id: str) -> None:
    """Revoke a key for good. API processes refuse it within
    `limits.api_key_cache_ttl_seconds` (their key cache), with no restart."""
    failure = revoke_api_key(_uow_factory(), key_id)
    if failure is not None:
        click.echo(f"error: {failure.code}: {failure.detail}", err=True)
        sys.exit(1)
    click.echo(f"revoked {key_id}", err=True)


def _moment(value: datetime | None) -> str:
    return "-" if value is None else f"{value.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


@api_keys.command("list")
def api_keys_list() -> None:
    """List every key, oldest first, tab-separated. Secrets are never stored, so never shown."""
    click.echo("\t".join(("id", "name", "scope", "owner", "created", "expires", "revoked")))
    for key in list_api_keys(_uow_factory()):
        fields = (key.id, key.name, key.scope, key.owner)
        moments = (_moment(key.created_at), _moment(key.expires_at), _moment(key.revoked_at))
        click.echo("\t".join((*fields, *moments)))


@main.group("currencies")
def currencies() -> None:
    """Manage custom units (ISO 4217 currencies are built in)."""


@currencies.command("add")
@click.argument("code")
@click.option("--exponent", type=int, required=True, help="Digits of the minor unit.")
def currencies_add(code: str, exponent: int) -> None:
    """Add a custom unit, for example `GOLD --exponent 0`."""
    failure = add_custom_currency(_uow_factory(), code=code, exponent=exponent)
    if failure is not None:
        click.echo(f"error: {failure.code}: {failure.detail}", err=True)
        sys.exit(1)
    click.echo(f"added {code} (exponent {exponent})", err=True)


@main.group("transfers")
def transfers() -> None:
    """Operate on transfers."""


@transfers.command("release")
@click.argument("transfer_id")
def transfers_release(transfer_id: str) -> None:
    """Give a quarantined transfer back to posting (once the cause of its failures is
    fixed): it becomes PENDING with a fresh count of attempts."""
    if not release_quarantined(_uow_factory(), transfer_id):
        click.echo(f"error: {transfer_id} is not a quarantined transfer", err=True)
        sys.exit(1)
    click.echo(f"released {transfer_id}", err=True)


@transfers.command("reject")
@click.argument("transfer_id")
def transfers_reject(transfer_id: str) -> None:
    """Give up on a quarantined transfer (and its atomic batch): it becomes rejected with
    `posting_failed`, and its transfer.rejected webhook event is sent."""
    rejected = reject_quarantined(
        _uow_factory(),
        transfer_id,
        webhook_requeue_after_seconds=Settings().webhook_requeue_after_seconds,
    )
    if not rejected:
        click.echo(f"error: {transfer_id} is not a quarantined transfer", err=True)
        sys.exit(1)
    click.echo(f"rejected {', '.join(rejected)}", err=True)


@main.command("reconcile")
@click.option(
    "--pending-age-max-seconds",
    type=float,
    default=lambda: Settings().reconcile_pending_age_max_seconds,
    show_default=True,
    help="A PENDING transfer older than this is a violation [RECONCILE_PENDING_AGE_MAX_SECONDS].",
)
@click.option(
    "--delivery-overdue-max-seconds",
    type=float,
    default=lambda: Settings().reconcile_delivery_overdue_max_seconds,
    show_default=True,
    help="A delivery due longer ago than this is a violation"
    " [RECONCILE_DELIVERY_OVERDUE_MAX_SECONDS].",
)
def reconcile_command(pending_age_max_seconds: float, delivery_overdue_max_seconds: float) -> None:
    """Check the books; print a report; exit 1 on any violation."""
    violations = reconcile(
        _uow_factory(),
        pending_age_max_seconds=pending_age_max_seconds,
        delivery_overdue_max_seconds=delivery_overdue_max_seconds,
    )
    click.echo(report(violations))
    broken = sum(bool(rows) for rows in violations.values())
    if broken:
        click.echo(f"{broken} rule(s) violated", err=True)
        sys.exit(1)
    click.echo("the books balance", err=True)
