"""The datapath's JSON-lines event stream (``colo-proxy run --events``), parsed.

One object per line, ``event`` names the kind: ``ready``, ``stats``,
``checkpoint-request``, ``checkpoint-done``, ``exit`` (docs/datapaths.md).
Lines that are not JSON objects with a known ``event`` are returned as ``LogLine``
so that nothing the datapath says is lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..compare.model import Divergence


@dataclass
class Ready:
    pass


@dataclass
class Stats:
    t: float
    counters: dict[str, Any]
    connections: list[dict[str, Any]]
    latency_ms: dict[str, float]


@dataclass
class CheckpointRequested:
    t: float
    reason: str
    key: str | None
    detail: str
    divergence: Divergence | None


@dataclass
class CheckpointDone:
    t: float
    released: int
    dropped: int


@dataclass
class Exit:
    reason: str


@dataclass
class LogLine:
    text: str


Event = Ready | Stats | CheckpointRequested | CheckpointDone | Exit | LogLine


def _num(obj: dict[str, Any], name: str) -> float:
    value = obj.get(name, 0)
    return float(value) if isinstance(value, int | float) else 0.0


def _divergence(value: Any) -> Divergence | None:
    if not isinstance(value, dict):
        return None
    try:
        return Divergence(offset=int(value["offset"]),
                          primary=bytes.fromhex(str(value.get("primary", ""))),
                          secondary=bytes.fromhex(str(value.get("secondary", ""))))
    except (KeyError, TypeError, ValueError):
        return None


def parse_event(line: str) -> Event:
    """One line of the stream as an Event (never raises)."""
    try:
        obj = json.loads(line)
    except ValueError:
        return LogLine(line)
    if not isinstance(obj, dict):
        return LogLine(line)
    kind = obj.get("event")
    if kind == "ready":
        return Ready()
    if kind == "stats":
        counters = obj.get("counters")
        conns = obj.get("connections")
        latency = obj.get("latency_ms")
        return Stats(
            t=_num(obj, "t"),
            counters=counters if isinstance(counters, dict) else {},
            connections=[c for c in conns if isinstance(c, dict)]
            if isinstance(conns, list) else [],
            latency_ms={k: float(v) for k, v in latency.items()
                        if isinstance(v, int | float)} if isinstance(latency, dict) else {})
    if kind == "checkpoint-request":
        key = obj.get("key")
        return CheckpointRequested(t=_num(obj, "t"), reason=str(obj.get("reason", "?")),
                                   key=str(key) if key is not None else None,
                                   detail=str(obj.get("detail", "")),
                                   divergence=_divergence(obj.get("divergence")))
    if kind == "checkpoint-done":
        return CheckpointDone(t=_num(obj, "t"), released=int(_num(obj, "released")),
                              dropped=int(_num(obj, "dropped")))
    if kind == "exit":
        return Exit(reason=str(obj.get("reason", "?")))
    return LogLine(line)
