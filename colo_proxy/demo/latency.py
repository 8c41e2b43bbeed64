"""Request latency as the client measured it, over a whole phase of the run.

Every sample is kept (a demo run makes a few thousand requests at most), so the
percentiles are exact (nearest rank) rather than medians of interval figures.  A
percentile is reported only when there are enough samples for it to mean
anything: a "p99" of 40 requests would just be their maximum.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

MIN_SAMPLES = {"p50": 1, "p90": 10, "p99": 100}
"""Fewest samples for which each percentile is reported (else null)."""

BUCKET_EDGES_MS = [0.25 * 2 ** (i / 2) for i in range(31)]
"""Upper edges of the histogram buckets: 0.25 ms to ~8 s, two per octave."""


def percentile(data: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted ``data`` (0 < p <= 100)."""
    rank = max(1, math.ceil(p / 100.0 * len(data)))
    return data[rank - 1]


class LatencyHistogram:
    """All samples of one phase, in milliseconds."""

    def __init__(self, samples: Iterable[float] = ()) -> None:
        self.samples = sorted(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def pct(self, name: str) -> float | None:
        if len(self.samples) < MIN_SAMPLES[name]:
            return None
        return percentile(self.samples, float(name[1:]))

    def buckets(self) -> list[list[float]]:
        """``[upper edge ms, count]`` of every non-empty bucket (the last edge is
        +inf, written as the maximum sample)."""
        out: list[list[float]] = []
        i = 0
        for edge in BUCKET_EDGES_MS:
            n = 0
            while i < len(self.samples) and self.samples[i] <= edge:
                n += 1
                i += 1
            if n:
                out.append([round(edge, 3), n])
        if i < len(self.samples):
            out.append([round(self.samples[-1], 3), len(self.samples) - i])
        return out

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None,
                    "mean": None, "histogram": []}
        return {"count": len(self.samples),
                **{name: _round(self.pct(name)) for name in MIN_SAMPLES},
                "max": _round(self.samples[-1]),
                "mean": _round(sum(self.samples) / len(self.samples)),
                "histogram": self.buckets()}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def describe(stats: dict[str, Any]) -> str:
    """``p50 1.20 ms, p90 3.40 ms, p99 9.30 ms, max 210 ms (812 requests)``; a
    percentile without enough samples is left out."""
    parts = [f"{name} {fmt_ms(stats[name])}" for name in MIN_SAMPLES
             if stats.get(name) is not None]
    parts.append(f"max {fmt_ms(stats.get('max'))}")
    return f"{', '.join(parts)} ({stats.get('count', 0)} requests)"
