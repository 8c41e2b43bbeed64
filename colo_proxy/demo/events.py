"""The datapath's JSON-lines event stream (``colo-proxy run --events``), parsed.

One object per line, ``event`` names the kind: ``ready``, ``stats``,
``checkpoint-request``, ``checkpoint-done``, ``exit`` (schema: docs/datapaths.md,
"Event stream").  Connection keys arrive as data (``key_record``); the parsed
events carry the key's display text in ``key`` (what the views show) and the data
in ``key_data``.
Lines that are not JSON objects with a known ``event`` are returned as ``LogLine``
so that nothing the datapath says is lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..compare.model import Divergence


@dataclass
class Ready:
    pass


@dataclass
class Stats:
    t: float
    counters: dict[str, Any]
    """The engine's counters (``Counters.as_dict``)."""
    connections: list[dict[str, Any]]
    """``key`` is the display text, ``key_data`` the key as data."""
    latency_ms: dict[str, float]
    """Releases since the previous stats event: count, p50, p99, max."""
    latency_histogram: dict[str, Any] = field(default_factory=dict)
    """Since start: ``buckets_ms`` (upper bounds), ``counts`` (one more: +Inf),
    ``count``, ``sum_ms``."""
    seam: dict[str, Any] = field(default_factory=dict)
    """The seam's counters (``SeamCounters.as_dict``)."""


@dataclass
class CheckpointRequested:
    t: float
    reason: str
    key: str | None
    detail: str
    divergence: Divergence | None
    key_data: dict[str, Any] | None = None


@dataclass
class CheckpointDone:
    t: float
    released: int
    dropped: int


@dataclass
class Exit:
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)
    """The final figures (released, delivered, lost, exit_*, ...)."""


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


def _key(value: Any) -> tuple[str | None, dict[str, Any] | None]:
    """(display text, data) of a key field: a key record, or the older text form."""
    if isinstance(value, dict):
        text = value.get("text")
        return (str(text) if text is not None else None), value
    return (str(value) if value is not None else None), None


def _connection(conn: dict[str, Any]) -> dict[str, Any]:
    text, data = _key(conn.get("key"))
    return {**conn, "key": text if text is not None else "?", "key_data": data}


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
            connections=[_connection(c) for c in conns if isinstance(c, dict)]
            if isinstance(conns, list) else [],
            latency_ms={k: float(v) for k, v in latency.items()
                        if isinstance(v, int | float)} if isinstance(latency, dict) else {},
            latency_histogram=hist if isinstance(hist := obj.get("latency_histogram"), dict)
            else {},
            seam=seam if isinstance(seam := obj.get("seam"), dict) else {})
    if kind == "checkpoint-request":
        text, data = _key(obj.get("key"))
        return CheckpointRequested(t=_num(obj, "t"), reason=str(obj.get("reason", "?")),
                                   key=text, detail=str(obj.get("detail", "")),
                                   divergence=_divergence(obj.get("divergence")),
                                   key_data=data)
    if kind == "checkpoint-done":
        return CheckpointDone(t=_num(obj, "t"), released=int(_num(obj, "released")),
                              dropped=int(_num(obj, "dropped")))
    if kind == "exit":
        return Exit(reason=str(obj.get("reason", "?")),
                    figures={k: v for k, v in obj.items() if k not in ("event", "t", "reason")})
    return LogLine(line)
