"""Small order statistics, with no third-party dependency."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict


class Summary(TypedDict):
    """What the runner keeps of a list of samples (all in the metric's display unit)."""

    n: int
    median: float
    p25: float
    p75: float
    p99: float
    min: float
    max: float


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not sorted_values:
        raise ValueError("percentile of no samples")
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


def summarize(samples: Sequence[float]) -> Summary:
    """Median, quartiles, p99 and extremes of ``samples`` (at least one)."""
    s = sorted(samples)
    return Summary(
        n=len(s),
        median=percentile(s, 50),
        p25=percentile(s, 25),
        p75=percentile(s, 75),
        p99=percentile(s, 99),
        min=float(s[0]),
        max=float(s[-1]),
    )


def spread_of(summary: Summary) -> tuple[str, float, float]:
    """The spread reported for a figure: p25-p75 from 5 samples up, min-max below that."""
    if summary["n"] >= 5:
        return ("p25-p75", summary["p25"], summary["p75"])
    return ("min-max", summary["min"], summary["max"])
