"""The agent's figures: one snapshot (JSON, ``colo-proxy status --agent``) and the same
figures as Prometheus metrics (prometheus-client, loopback by default).

Metric names (all prefixed ``colo_``, label ``vm``):

| metric | type | what |
|---|---|---|
| ``checkpoint_requests_total{reason}`` | counter | requests from the datapath, by reason |
| ``checkpoints_total{kind}`` | counter | checkpoints done: ``requested`` or ``periodic`` |
| ``checkpoint_retries_total`` | counter | requests sent again (no STOP in time) |
| ``frames_released_total``, ``bytes_released_total`` | counter | primary output sent to outdev |
| ``frames_dropped_total{reason}`` | counter | engine drops (matched secondaries included) |
| ``frames_held``, ``bytes_held`` | gauge | held right now |
| ``overflow_total`` | counter | frames dropped past twice a limit |
| ``heartbeats_refused_total{why}`` | counter | forged, replayed, stale, malformed, wrong_peer |
| ``in_colo`` | gauge | 1 while COLO runs |
| ``match_release_latency_seconds`` | histogram | primary arrival to release, on a match |
| ``checkpoint_duration_seconds`` | histogram | STOP to RESUME |
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .config import HostPort

log = logging.getLogger("colo_proxy.agent.metrics")

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 3.0,
                   10.0)
CHECKPOINT_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

Snapshot = dict[str, dict[str, Any]]
"""VM name -> its figures (see ``vm_figures``)."""


class Histograms:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.match_release = Histogram(
            "colo_match_release_latency_seconds", "Primary arrival to release, on a match",
            ["vm"], buckets=LATENCY_BUCKETS, registry=registry)
        self.checkpoint = Histogram(
            "colo_checkpoint_duration_seconds", "STOP to RESUME of a COLO checkpoint",
            ["vm"], buckets=CHECKPOINT_BUCKETS, registry=registry)


class _Figures(Collector):
    """Reads a snapshot at scrape time (on the agent's event loop)."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        fams: dict[str, Any] = {}

        def fam(kind: type[Any], name: str, doc: str, labels: list[str]) -> Any:
            if name not in fams:
                fams[name] = kind(f"colo_{name}", doc, labels=["vm", *labels])
            return fams[name]

        for vm, f in snap.items():
            for reason, n in f.get("checkpoint_requests", {}).items():
                fam(CounterMetricFamily, "checkpoint_requests", "Checkpoint requests",
                    ["reason"]).add_metric([vm, reason], n)
            for kind in ("requested", "periodic"):
                fam(CounterMetricFamily, "checkpoints", "Checkpoints done", ["kind"]
                    ).add_metric([vm, kind], f.get("checkpoints", {}).get(kind, 0))
            for name, doc in (("checkpoint_retries", "Checkpoint requests sent again"),
                              ("frames_released", "Primary frames released"),
                              ("bytes_released", "Primary bytes released"),
                              ("overflow", "Frames dropped past twice a limit")):
                fam(CounterMetricFamily, name, doc, []).add_metric([vm], f.get(name, 0))
            for reason, n in f.get("frames_dropped", {}).items():
                fam(CounterMetricFamily, "frames_dropped", "Frames dropped", ["reason"]
                    ).add_metric([vm, reason], n)
            for why, n in f.get("heartbeats_refused", {}).items():
                fam(CounterMetricFamily, "heartbeats_refused", "Heartbeats refused", ["why"]
                    ).add_metric([vm, why], n)
            for name, doc in (("frames_held", "Frames held now"),
                              ("bytes_held", "Bytes held now"),
                              ("in_colo", "1 while COLO runs")):
                fam(GaugeMetricFamily, name, doc, []).add_metric([vm], float(f.get(name, 0)))
        yield from fams.values()


class MetricsServer:
    """Prometheus endpoint; the HTTP thread asks the event loop for each snapshot."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.registry = CollectorRegistry()
        self.histograms = Histograms(self.registry)
        self._snapshot = snapshot
        self._loop: asyncio.AbstractEventLoop | None = None
        self.registry.register(_Figures(self._threadsafe_snapshot))
        self._server: Any = None

    def _threadsafe_snapshot(self) -> Snapshot:
        loop = self._loop
        if loop is None:
            return self._snapshot()

        async def take() -> Snapshot:
            return self._snapshot()

        future = asyncio.run_coroutine_threadsafe(take(), loop)
        try:
            return future.result(timeout=2.0)
        except (concurrent.futures.TimeoutError, RuntimeError):
            return {}

    def start(self, address: HostPort) -> None:
        self._loop = asyncio.get_running_loop()
        result = start_http_server(address.port, address.host, registry=self.registry)
        self._server = result[0] if isinstance(result, tuple) else None
        log.info("metrics on http://%s/metrics", address)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def write_status(path: Path, snapshot: Snapshot) -> None:
    """Atomically replace ``path`` with the snapshot as JSON (mode 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".agent-status-")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({"agent": snapshot}, out, indent=2, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
