"""Everything the demo learned so far: the driver's requests and the datapath's
events, merged under one lock (reader threads write, the view and summary read)."""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .events import (
    CheckpointDone,
    CheckpointRequested,
    Event,
    Exit,
    LogLine,
    Ready,
    Stats,
)

_KEY_RE = re.compile(r"^(\w[\w-]*) (\S+):(\d+) -> (\S+):(\d+)")


def key_ports(key: str | None) -> tuple[int, int] | None:
    """(source port, destination port) of a connection key's text form."""
    match = _KEY_RE.match(key or "")
    if match is None:
        return None
    return int(match.group(3)), int(match.group(5))


@dataclass
class ConnView:
    """The largest figures seen for one connection key over all stats events."""

    key: str
    frames_matched: int = 0
    bytes_matched: int = 0
    held_primary: int = 0
    held_secondary: int = 0
    checkpoint_requests: int = 0
    last_seen: float = 0.0
    last_active: float = 0.0
    """Stats time at which its figures last changed."""


@dataclass
class DemoState:
    started: float = field(default_factory=time.monotonic)
    stopped: float | None = None
    """When the traffic ended (the clock stops there)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[dict[str, Any]] = field(default_factory=list)
    driver_done: dict[str, Any] | None = None
    driver_log: list[str] = field(default_factory=list)
    ready: bool = False
    stats: Stats | None = None
    conns: dict[str, ConnView] = field(default_factory=dict)
    checkpoints: list[CheckpointRequested] = field(default_factory=list)
    flushes: list[CheckpointDone] = field(default_factory=list)
    exit_reason: str | None = None
    datapath_log: list[str] = field(default_factory=list)
    latency_windows: list[dict[str, float]] = field(default_factory=list)
    """``latency_ms`` of every stats event that saw releases (one per interval)."""
    checkpoint_times: list[float] = field(default_factory=list)
    """When each checkpoint request reached the demo (its clock, like ``elapsed``)."""
    baseline: list[dict[str, Any]] = field(default_factory=list)
    """The requests of the unprotected baseline phase."""
    _baseline_part: int = 1
    _baseline_offset: float = 0.0

    def baseline_part(self, part: int) -> None:
        """The baseline's next part starts (its driver's clock starts at 0 again)."""
        with self.lock:
            self._baseline_part = part
            if self.baseline:
                last = self.baseline[-1]
                self._baseline_offset = float(last["baseline_t"]) + float(last["ms"]) / 1000

    def restart_clock(self) -> None:
        """Count time from now on (when the traffic starts)."""
        with self.lock:
            self.started = time.monotonic()

    def stop_clock(self) -> None:
        with self.lock:
            self.stopped = time.monotonic()

    def elapsed(self) -> float:
        return (self.stopped or time.monotonic()) - self.started

    def on_datapath_event(self, event: Event) -> None:
        with self.lock:
            match event:
                case Ready():
                    self.ready = True
                case Stats():
                    self.stats = event
                    if event.latency_ms.get("count"):
                        self.latency_windows.append(event.latency_ms)
                    for conn in event.connections:
                        self._merge_conn(conn, event.t)
                case CheckpointRequested():
                    self.checkpoints.append(event)
                    self.checkpoint_times.append(time.monotonic() - self.started)
                case CheckpointDone():
                    self.flushes.append(event)
                case Exit():
                    self.exit_reason = event.reason
                case LogLine():
                    self.datapath_log.append(event.text)

    def _merge_conn(self, conn: dict[str, Any], t: float) -> None:
        key = str(conn.get("key", "?"))
        view = self.conns.setdefault(key, ConnView(key))
        before = (view.frames_matched, view.held_primary, view.held_secondary,
                  view.checkpoint_requests)
        for name in ("frames_matched", "bytes_matched", "checkpoint_requests"):
            value = conn.get(name)
            if isinstance(value, int):
                setattr(view, name, max(getattr(view, name), value))
        for name in ("held_primary", "held_secondary"):
            value = conn.get(name)
            if isinstance(value, int):
                setattr(view, name, value)
        view.last_seen = t
        if (view.frames_matched, view.held_primary, view.held_secondary,
                view.checkpoint_requests) != before:
            view.last_active = t

    def on_driver_line(self, line: str, baseline: bool = False) -> None:
        """One line of a traffic driver (``baseline``: the unprotected phase's)."""
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        with self.lock:
            if isinstance(obj, dict) and obj.get("event") == "request":
                if baseline:
                    # One time axis over both parts of the baseline.
                    t = obj.get("t")
                    obj["baseline_part"] = self._baseline_part
                    obj["baseline_t"] = round(self._baseline_offset + (
                        float(t) if isinstance(t, int | float) else 0.0), 3)
                    self.baseline.append(obj)
                    return
                # When the request started, on the demo's clock (the driver's own
                # clock starts when its interpreter is up).
                ms = obj.get("ms")
                spent = float(ms) / 1000.0 if isinstance(ms, int | float) else 0.0
                obj["demo_t"] = round(time.monotonic() - self.started - spent, 3)
                self.requests.append(obj)
            elif baseline:
                return
            elif isinstance(obj, dict) and obj.get("event") == "done":
                self.driver_done = obj
            else:
                self.driver_log.append(line)

    def snapshot(self) -> DemoSnapshot:
        """A consistent copy for rendering."""
        with self.lock:
            return DemoSnapshot(
                elapsed=self.elapsed(), ready=self.ready, requests=list(self.requests),
                stats=self.stats, conns=dict(self.conns), checkpoints=list(self.checkpoints),
                flushes=list(self.flushes), exit_reason=self.exit_reason,
                latency_windows=list(self.latency_windows),
                checkpoint_times=list(self.checkpoint_times), baseline=list(self.baseline))


@dataclass
class DemoSnapshot:
    elapsed: float
    ready: bool
    requests: list[dict[str, Any]]
    stats: Stats | None
    conns: dict[str, ConnView]
    checkpoints: list[CheckpointRequested]
    flushes: list[CheckpointDone]
    exit_reason: str | None
    latency_windows: list[dict[str, float]]
    checkpoint_times: list[float] = field(default_factory=list)
    baseline: list[dict[str, Any]] = field(default_factory=list)

    def latency_last(self) -> dict[str, float]:
        """The latest stats interval that released anything."""
        return self.latency_windows[-1] if self.latency_windows else {}

    def hold_time(self) -> dict[str, Any]:
        """The PVM frame hold time over the run, from the per-interval figures the
        datapath reports (count, p50, p99, max of each stats interval).  Those do not
        add up to run-wide percentiles, so they are named for what they are."""
        wins = self.latency_windows
        if not wins:
            return {"releases": 0, "intervals": 0}
        return {"releases": int(sum(w["count"] for w in wins)), "intervals": len(wins),
                "intervals_with_median_0": sum(1 for w in wins if w["p50"] < 0.0005),
                "largest_interval_median": max(w["p50"] for w in wins),
                "worst_interval_p99": max(w["p99"] for w in wins),
                "max": max(w["max"] for w in wins),
                "intervals_with_max_over_150": sum(1 for w in wins if w["max"] > 150.0)}

    def counter(self, name: str) -> Any:
        return self.stats.counters.get(name) if self.stats else None

    @property
    def requests_ok(self) -> int:
        return sum(1 for r in self.requests if r.get("ok"))

    @property
    def requests_failed(self) -> int:
        return sum(1 for r in self.requests if not r.get("ok"))

    def reasons(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for cp in self.checkpoints:
            out[cp.reason] = out.get(cp.reason, 0) + 1
        return out
