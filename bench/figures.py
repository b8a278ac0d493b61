"""The percentile every benchmark prints: nearest rank, always one of the measured values.

One definition for all of them, so a p99 from one script means what it means in another, and never lies
above the largest value measured (``statistics.quantiles``' default method extrapolates past it on small
samples: one benchmark printed a p99 of 713 ms over a maximum of 667).
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], p: float) -> float:
    """The smallest measured value that at least ``p`` percent of ``values`` do not exceed (NaN when empty)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = math.ceil(p / 100 * len(ordered))
    return ordered[min(max(rank, 1), len(ordered)) - 1]
