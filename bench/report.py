"""Figures, ratios and their targets, printed as a table and written as Markdown."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Target:
    at_least: bool  # True: value >= threshold; False: value <= threshold
    threshold: float
    text: str

    def met(self, value: float) -> bool:
        return value >= self.threshold if self.at_least else value <= self.threshold


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    value: float
    unit: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    target: Target | None = None
    note: str = ""

    def cells(self) -> list[str]:
        return [
            self.label,
            f"{self.value:,.1f} {self.unit}"
            if self.unit == "ms"
            else f"{self.value:,.0f} {self.unit}",
            _ms(self.p50_ms),
            _ms(self.p99_ms),
            self.target.text if self.target else "",
            _verdict(self.target, self.value),
            self.note,
        ]


@dataclass(frozen=True)
class Ratio:
    label: str
    value: float
    percent: bool
    target: Target | None

    def cells(self) -> list[str]:
        shown = f"{self.value:.0%}" if self.percent else f"{self.value:.2f}x"
        text = self.target.text if self.target is not None else ""
        return [self.label, shown, text, _verdict(self.target, self.value)]


FIGURE_HEADER = ["stage", "figure", "p50 ms", "p99 ms", "target", "", "note"]
FOOTNOTE = (
    "p50/p99: request latency seen by the client; on the accepted-to-posted row, "
    "finalized_at - created_at of the transfers (the database's clock)."
)
MARKDOWN_PREAMBLE = """# Performance

Figures from one run of `make bench` (`python -m bench`, see `bench/run.py`) on the
machine below: the API under gunicorn as the Procfile runs it (2 workers x 16 threads),
the Celery posting workers (prefork, concurrency 2), PostgreSQL (durable commits) and
Valkey, all on one machine with the load client. Run it again for your own machine;
timings vary by machine and by run.
"""
RATIO_HEADER = ["ratio", "value", "target", ""]


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:,.1f}"


def _verdict(target: Target | None, value: float) -> str:
    if target is None:
        return ""
    return "met" if target.met(value) else "MISSED"


def machine() -> dict[str, str]:
    """CPU model and core count (from /proc/cpuinfo and os.cpu_count()), and the OS."""
    model, processors = "unknown", 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif name.strip() == "processor":
                processors += 1
    except OSError:
        pass
    return {
        "CPU": model,
        "cores": f"{os.cpu_count()} (os.cpu_count), {processors} in /proc/cpuinfo",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
    }


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def summary(
    figures: list[Figure], ratios: list[Ratio], context: dict[str, str], *, markdown: bool
) -> str:
    table = markdown_table if markdown else text_table
    about = [[name, value] for name, value in context.items()]
    parts = [
        table(["machine and run", ""], about),
        table(FIGURE_HEADER, [f.cells() for f in figures]) + "\n\n" + FOOTNOTE,
        table(RATIO_HEADER, [r.cells() for r in ratios])
        if ratios
        else "(no ratios: a stage they need did not run)",
    ]
    return "\n\n".join(parts) + "\n"
