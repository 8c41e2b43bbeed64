"""Typed views of what the kernel returns: nodes, tuples and events."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .constants import GoneReason, Mode, Reason, State

if TYPE_CHECKING:
    from ..compare.model import ConnKey

STATS_FIELDS = (
    "checkpoints",
    "checkpoint-requests",
    "requests-suppressed",
    "failovers",
    "resets",
)


@dataclass(frozen=True)
class FlowTuple:
    """The connection a checkpoint request is about (the ``tuple`` nest).

    ``family`` is the IP version (4 or 6); ``src``/``dst`` are packed addresses
    (4 or 16 bytes); ``vlan`` is None when untagged.
    """

    family: int
    proto: int
    src: bytes
    dst: bytes
    sport: int = 0
    dport: int = 0
    vlan: int | None = None

    @classmethod
    def from_addresses(
        cls, proto: int, src: str, dst: str, *, sport: int = 0, dport: int = 0,
        vlan: int | None = None,
    ) -> FlowTuple:
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        if s.version != d.version:
            raise ValueError(f"address families differ: {src} / {dst}")
        return cls(s.version, proto, s.packed, d.packed, sport, dport, vlan)

    @classmethod
    def from_conn_key(cls, key: ConnKey) -> FlowTuple:
        """From a ``colo_proxy.compare.model.ConnKey`` (IP keys only)."""
        if key.l3 not in (4, 6):
            raise ValueError(f"only IP connections have a tuple (l3={key.l3})")
        vlan = key.vlan if key.vlan >= 0 else None
        return cls(key.l3, key.proto, bytes(key.src), bytes(key.dst), key.sport, key.dport, vlan)

    def __str__(self) -> str:
        src = str(ipaddress.ip_address(self.src)) if len(self.src) in (4, 16) else self.src.hex()
        dst = str(ipaddress.ip_address(self.dst)) if len(self.dst) in (4, 16) else self.dst.hex()
        text = f"proto {self.proto} {src}:{self.sport} -> {dst}:{self.dport}"
        return text if self.vlan is None else f"{text} vlan {self.vlan}"


@dataclass(frozen=True)
class Node:
    """One protected VM's node as the kernel reports it."""

    index: int
    mode: Mode
    state: State
    owner: int
    stats: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "mode": str(self.mode),
            "state": str(self.state),
            "owner": self.owner,
            "stats": dict(self.stats),
        }


@dataclass(frozen=True)
class CheckpointRequestEvent:
    """Notification: a node needs a checkpoint."""

    index: int
    mode: Mode
    reason: Reason
    tuple: FlowTuple | None = None


@dataclass(frozen=True)
class NodeGoneEvent:
    """Notification: a node was destroyed (final counters included)."""

    index: int
    mode: Mode
    reason: GoneReason
    stats: dict[str, int] = field(default_factory=dict)


Event = CheckpointRequestEvent | NodeGoneEvent
