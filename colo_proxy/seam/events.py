"""The datapath event stream: one JSON object per line (schema: docs/datapaths.md).

Connection keys are data (``key_record``), never only display strings.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from typing import IO, Any

from ..compare.model import CheckpointRequest, ConnKey, ConnStats
from ..errors import InputError

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 47: "gre", 132: "sctp"}


def key_record(key: ConnKey | None) -> dict[str, Any] | None:
    """A connection key as JSON data.

    ``{"l3": 4|6|ETHERTYPE, "proto": "tcp"|"udp"|...|NUMBER, "src", "dst": address
    text or null, "sport", "dport", "vlan": null or the tag (stacked tags packed
    outer << 12 | inner), "frag": bool, "text": the display form}``.
    """
    if key is None:
        return None
    ip = key.l3 in (4, 6)
    return {
        "l3": key.l3,
        "proto": PROTO_NAMES.get(key.proto, key.proto) if ip else None,
        "src": str(ipaddress.ip_address(key.src)) if ip else None,
        "dst": str(ipaddress.ip_address(key.dst)) if ip else None,
        "sport": key.sport,
        "dport": key.dport,
        "vlan": key.vlan if key.vlan >= 0 else None,
        "frag": bool(key.frag),
        "text": str(key),
    }


def request_record(req: CheckpointRequest) -> dict[str, Any]:
    div = req.divergence
    return {
        "reason": str(req.reason),
        "key": key_record(req.key),
        "detail": req.detail,
        "divergence": None if div is None else {
            "offset": div.offset, "primary": div.primary.hex(), "secondary": div.secondary.hex()},
    }


def connection_record(stats: ConnStats) -> dict[str, Any]:
    return {
        "key": key_record(stats.key),
        "frames_matched": stats.frames_matched,
        "bytes_matched": stats.bytes_matched,
        "held_primary": stats.held_primary,
        "held_secondary": stats.held_secondary,
        "checkpoint_requests": stats.checkpoint_requests,
    }


class EventWriter:
    """Writes one JSON object per line to a file or stdout (``-``), flushed per event.
    With no target, ``emit`` does nothing (``enabled`` is False)."""

    def __init__(self, target: str | None, option: str = "--events") -> None:
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
                raise InputError(f"{option} {target}: {exc.strerror}") from None
            self._close = True

    @property
    def enabled(self) -> bool:
        return self._out is not None

    def now(self) -> float:
        return round(time.monotonic() - self.start, 6)

    def emit(self, event: str, **fields: Any) -> None:
        if self._out is None:
            return
        record: dict[str, Any] = {"event": event, "t": self.now()}
        record.update(fields)
        try:
            self._out.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._out.flush()
        except (BrokenPipeError, ValueError):
            self._out = None  # the reader went away; keep running without events

    def close(self) -> None:
        if self._close and self._out is not None:
            self._out.close()
        self._out = None
