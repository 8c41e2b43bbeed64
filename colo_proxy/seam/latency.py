"""Match-to-release latency: how long a released primary frame was held.

``LatencyHistogram`` has fixed bucket bounds (``LATENCY_BUCKETS_MS``, never
changed once published, so that a Prometheus exporter can serve it as a
histogram and two runs can be compared bucket by bucket).  ``counts[i]`` is the
number of releases with ``held_ms <= LATENCY_BUCKETS_MS[i]`` and above the
previous bound; the last entry counts everything above the last bound (+Inf).
Counts are since start (monotonic), as Prometheus expects; a Prometheus
``le`` bucket is the running sum of ``counts``.

``window()`` reports the releases since the previous call: count, p50, p99, max.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0,
    1000.0, 2500.0, 5000.0, 10000.0)
"""Upper bounds (ms, inclusive); one more bucket above the last (+Inf)."""


class LatencyHistogram:
    def __init__(self, keep_window: bool = True) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self.count = 0
        self.sum_ms = 0.0
        self.keep_window = keep_window
        self._window: list[float] = []

    def add(self, held_ms: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS_MS, held_ms)] += 1
        self.count += 1
        self.sum_ms += held_ms
        if self.keep_window:
            self._window.append(held_ms)

    def as_dict(self) -> dict[str, Any]:
        return {"buckets_ms": list(LATENCY_BUCKETS_MS), "counts": list(self.counts),
                "count": self.count, "sum_ms": round(self.sum_ms, 3)}

    def window(self) -> dict[str, Any]:
        data = sorted(self._window)
        self._window = []
        if not data:
            return {"count": 0, "p50": None, "p99": None, "max": None}

        def pct(p: float) -> float:
            return round(data[min(len(data) - 1, int(p * len(data)))], 3)

        return {"count": len(data), "p50": pct(0.5), "p99": pct(0.99),
                "max": round(data[-1], 3)}
