"""Reconciliation: do the books still balance, and is any work stuck?"""

from __future__ import annotations

from ledger_core.service_layer.ports import UnitOfWorkFactory, Violations

# Defaults for the two "stuck work" rules; the CLI and the beat task can change them.
pending_age_max_seconds_default = 300.0
delivery_overdue_max_seconds_default = 600.0


def reconcile(
    uow_factory: UnitOfWorkFactory,
    *,
    pending_age_max_seconds: float = pending_age_max_seconds_default,
    delivery_overdue_max_seconds: float = delivery_overdue_max_seconds_default,
) -> Violations:
    """Violations by rule, read in one consistent snapshot so that rules agree."""
    with uow_factory() as uow:
        return uow.books.violations(
            pending_age_max_seconds=pending_age_max_seconds,
            delivery_overdue_max_seconds=delivery_overdue_max_seconds,
        )


def report(violations: Violations, sample_size_max: int = 10) -> str:
    """A human-readable report: one line per rule, with a few offending rows."""
    lines = []
    for rule, rows in violations.items():
        if rows:
            sample = ", ".join(f"{subject} ({value})" for subject, value in rows[:sample_size_max])
            more = f" and {len(rows) - sample_size_max} more" if len(rows) > sample_size_max else ""
            lines.append(f"FAIL {rule}: {len(rows)} — {sample}{more}")
        else:
            lines.append(f"ok   {rule}")
    return "\n".join(lines)
