"""`ledger` console script: operator commands that need no HTTP."""

from __future__ import annotations

import sys

import click

from ledger_core.adapters.database import make_engine
from ledger_core.adapters.sql import SqlUnitOfWorkFactory
from ledger_core.config import Settings
from ledger_core.service_layer.access import Scope, add_custom_currency, create_api_key
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


@api_keys.command("create")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option(
    "--scope",
    type=click.Choice([s.value for s in Scope]),
    default=Scope.READ.value,
    show_default=True,
)
def api_keys_create(name: str, scope: str) -> None:
    """Create a key and print it, alone, on stdout. It is not shown again."""
    key_id, secret = create_api_key(_uow_factory(), name=name, scope=Scope(scope))
    click.echo(f"created {key_id} ({scope}) for {name!r}", err=True)
    click.echo(secret)


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
