"""The datapath event stream: JSON lines (docs/datapaths.md lists the events)."""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

from ..compare.model import CheckpointRequest, ConnStats, Counters
from ..errors import InputError


class EventWriter:
    """Writes one JSON object per line to a file or stdout (``-``), flushed per event."""

    def __init__(self, target: str | None) -> None:
        self.start = time.monotonic()
        self._out: IO[str] | None
        self._close = False
        if target is None:
            self._out = None
        elif target == "-":
            self._out = sys.stdout
        else:
            try:
                self._out = open(target, "w", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise InputError(f"--events {target}: {exc.strerror}") from None
            self._close = True

    def now(self) -> float:
        return round(time.monotonic() - self.start, 6)

    def emit(self, event: str, **fields: Any) -> None:
        if self._out is None:
            return
        record: dict[str, Any] = {"event": event}
        if event not in ("ready",):
            record["t"] = self.now()
        record.update(fields)
        self._out.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._out.flush()

    def close(self) -> None:
        if self._close and self._out is not None:
            self._out.close()
        self._out = None


class LatencyWindow:
    """Hold times (ms) of the PVM packets released since the last report."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def add(self, held_ms: float) -> None:
        self.samples.append(held_ms)

    def report(self) -> dict[str, Any]:
        data = sorted(self.samples)
        self.samples = []
        if not data:
            return {"count": 0, "p50": None, "p99": None, "max": None}

        def pct(p: float) -> float:
            return round(data[min(len(data) - 1, int(p * len(data)))], 3)

        return {"count": len(data), "p50": pct(0.5), "p99": pct(0.99),
                "max": round(data[-1], 3)}


def connection_record(stats: ConnStats) -> dict[str, Any]:
    return {
        "key": str(stats.key),
        "frames_matched": stats.frames_matched,
        "bytes_matched": stats.bytes_matched,
        "held_primary": stats.held_primary,
        "held_secondary": stats.held_secondary,
        "checkpoint_requests": stats.checkpoint_requests,
    }


def request_record(req: CheckpointRequest) -> dict[str, Any]:
    div = req.divergence
    return {
        "reason": str(req.reason),
        "key": str(req.key) if req.key is not None else None,
        "detail": req.detail,
        "divergence": None if div is None else {
            "offset": div.offset, "primary": div.primary.hex(), "secondary": div.secondary.hex()},
    }


def stats_record(counters: Counters) -> dict[str, object]:
    return counters.as_dict()
