"""After a run: what the processes logged that looks wrong. The ledger's processes log JSON
lines (level, event); gunicorn, Celery's bootstrap, PostgreSQL and Valkey log plain text."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import percentile
from workers.celery_app import POST_PENDING_TASK

samples_per_file_max = 5
sample_length_max = 240
# Plain-text lines that mean trouble, from gunicorn, Python, PostgreSQL and Valkey.
PLAIN_ERROR = re.compile(r"\[(ERROR|CRITICAL)\]|^Traceback|\b(ERROR|FATAL|PANIC):")
PLAIN_WARNING = re.compile(r"\[WARNING\]|\bWARNING:|# WARNING|\w+Warning: ")


@dataclass
class Findings:
    errors: int = 0
    warnings: int = 0
    # HTTP statuses of the API's request lines that were not 2xx.
    statuses: Counter[int] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    # The posting workers' own account: (transfers, milliseconds) of each committed
    # batch, and the wake-up tasks that found nothing to post.
    batches: list[tuple[int, float]] = field(default_factory=list)
    tasks: int = 0
    idle_tasks: int = 0

    def sample(self, text: str) -> None:
        text = text[:sample_length_max]
        if len(self.samples) < samples_per_file_max and text not in self.samples:
            self.samples.append(text)


def _json_line(line: str, found: Findings) -> None:
    try:
        event = json.loads(line)
    except ValueError:
        return
    if not isinstance(event, dict):
        return
    level = str(event.get("level", "")).lower()
    status = event.get("status")
    _posting_line(event, found)
    if event.get("event") == "request" and isinstance(status, int) and not 200 <= status < 300:
        found.statuses[status] += 1
    if level in ("error", "critical", "exception"):
        found.errors += 1
        found.sample(f"{level}: {event.get('event')} {str(event.get('exception', ''))[-120:]}")
    elif level == "warning":
        found.warnings += 1
        found.sample(f"warning: {event.get('event')}")


def _posting_line(event: dict, found: Findings) -> None:
    text = str(event.get("event", ""))
    if text == "posting batch committed" and "duration_ms" in event:
        found.batches.append((len(event.get("transfer_ids", [])), float(event["duration_ms"])))
    elif text.startswith(f"Task {POST_PENDING_TASK}[") and " succeeded in " in text:
        found.tasks += 1
        found.idle_tasks += text.endswith(": 0")


def _posting_digest(found: Findings) -> str:
    full_size = max(size for size, _ in found.batches)
    full = sorted(ms for size, ms in found.batches if size == full_size)
    part = sorted(ms for size, ms in found.batches if size < full_size)
    text = (
        f"    posting: {len(found.batches):,} batches committed; {len(full):,} of "
        f"{full_size:,} transfers, p50 {percentile(full, 0.5):,.0f} ms, "
        f"p99 {percentile(full, 0.99):,.0f} ms"
    )
    if part:
        text += (
            f"; {len(part):,} smaller, p50 {percentile(part, 0.5):,.0f} ms, "
            f"p99 {percentile(part, 0.99):,.0f} ms"
        )
    return text + f"; {found.idle_tasks:,} of {found.tasks:,} wake-up tasks found nothing to post"


def scan_file(path: Path) -> Findings:
    found = Findings()
    with path.open(errors="replace") as lines:
        for line in lines:
            if line.startswith("{"):
                _json_line(line, found)
            elif PLAIN_ERROR.search(line):
                found.errors += 1
                found.sample(line.strip())
            elif PLAIN_WARNING.search(line):
                found.warnings += 1
                found.sample(line.strip())
    return found


def scan(run_dir: Path) -> dict[str, Findings]:
    """Every process log of the run (pgbench's reports are figures, not logs)."""
    paths = sorted(p for p in run_dir.rglob("*.log") if not p.name.startswith("pgbench-"))
    return {str(p.relative_to(run_dir)): scan_file(p) for p in paths}


def describe(findings: dict[str, Findings], anomalies: list[str]) -> str:
    lines = ["Log check (errors and warnings the processes logged during the run):"]
    for name, found in findings.items():
        statuses = ", ".join(f"{n:,} x {s}" for s, n in sorted(found.statuses.items()))
        lines.append(
            f"- {name}: {found.errors:,} errors, {found.warnings:,} warnings"
            + (f"; non-2xx answers: {statuses}" if statuses else "")
        )
        lines += [f"    {sample}" for sample in found.samples]
        if found.batches:
            lines.append(_posting_digest(found))
    if anomalies:
        lines.append("Anomalies seen by the harness:")
        lines += [f"- {text}" for text in anomalies]
    return "\n".join(lines) + "\n"
