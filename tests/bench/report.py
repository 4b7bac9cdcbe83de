"""Figures, verdicts and the plain-text table."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    figure: str
    value: str
    target: str = ""
    verdict: str = ""


@dataclass
class Outcome:
    """What one scenario measured: table rows and the raw numbers for --json."""

    number: int
    title: str
    raw: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    cpu_check_ms: float | None = None
    """The machine's speed check taken just before this scenario ran (shown under its name)."""

    def add(self, figure: str, value: str, target: str = "", verdict: str = "") -> None:
        self.rows.append(Row(figure, value, target, verdict))


def cpu_check_ms(steps: int = 2_000_000) -> float:
    """A fixed pure-Python loop, timed: how fast this machine is right now (shared machines drift)."""
    began = time.perf_counter()
    total = 0
    for i in range(steps):
        total += i
    return (time.perf_counter() - began) * 1000


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def secs(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def msecs(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def per_second(value: float | None, unit: str = "candles/s") -> str:
    return "n/a" if value is None else f"{value:,.0f} {unit}"


def megabytes(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1e6:.1f} MB"


def count(value: int | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:,}{' ' + unit if unit else ''}"


def cpu(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s CPU"


def at_most(value: float | None, limit: float, unit_fmt: Any = secs) -> str:
    """PASS, or MISS with by how much."""
    if value is None:
        return "n/a"
    if value <= limit:
        return "PASS"
    return f"MISS by {unit_fmt(value - limit)} (+{100 * (value / limit - 1):.0f}%)"


def below(value: float | None, limit: float, unit_fmt: Any = secs) -> str:
    """PASS if strictly under `limit`, else MISS with by how much."""
    if value is None:
        return "n/a"
    if value < limit:
        return "PASS"
    return f"MISS by {unit_fmt(value - limit)} (+{100 * (value / limit - 1):.0f}%)"


def at_least(value: float | None, floor: float) -> str:
    if value is None:
        return "n/a"
    if value >= floor:
        return "PASS"
    return f"MISS by {100 * (floor - value) / floor:.0f}%"


def render(outcomes: Sequence[Outcome], header: str) -> str:
    """One aligned plain-text table: scenario | figure | value | target | ratio / verdict."""
    head = ("scenario", "figure", "value", "target", "ratio / verdict")
    lines: list[tuple[str, ...]] = []  # the cells, and "new" where a scenario begins
    for outcome in sorted(outcomes, key=lambda o: o.number):
        label = f"{outcome.number} {outcome.title}"
        check = "" if outcome.cpu_check_ms is None else f"  (check {outcome.cpu_check_ms:.0f} ms)"
        for i, row in enumerate(outcome.rows):
            first = label if i == 0 else check if i == 1 else ""
            lines.append((first, row.figure, row.value, row.target, row.verdict, "new" if i == 0 else ""))
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(widths[i]) if i == 2 else cell.ljust(widths[i]) for i, cell in enumerate(cells)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [header, "", fmt(head), rule]
    previous = None
    for line in lines:
        if line[-1] and previous is not None:
            out.append("")
        out.append(fmt(line[:-1]))
        previous = line
    return "\n".join(out)
