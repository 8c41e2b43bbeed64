"""Typed views of what the kernel returns: nodes, tuples and events."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .constants import TUPLE_MAX_VLANS, GoneReason, Mode, Reason, State

if TYPE_CHECKING:
    from ..compare.model import ConnKey

STATS_FIELDS = (
    "checkpoints",
    "checkpoint-requests",
    "requests-suppressed",
    "requests-resent",
    "requests-lost",
    "failovers",
    "resets",
)

DP_STATS_FIELDS = (
    "dp-captured",
    "dp-released",
    "dp-svm-frames",
    "dp-matched",
    "dp-mismatches",
    "dp-uncompared",
    "dp-control-passed",
    "dp-dropped",
    "dp-flushed",
    "dp-held-packets",
    "dp-held-bytes",
    "dp-connections",
)
"""The primary datapath's counters and levels (``stats`` nest; names without ``dp-`` in
``Node.dp_stats``).  All 0 on a node without a datapath."""

SEC_STATS_FIELDS = (
    "sec-svm-frames",
    "sec-fwd-frames",
    "sec-translated-out",
    "sec-translated-in",
    "sec-held",
    "sec-dropped",
    "sec-flows",
)
"""The secondary datapath's (SECCOLO) counters and its level ``sec-flows`` (``stats``
nest; names without ``sec-`` in ``Node.sec_stats``).  All 0 on a node without one."""

VLAN_ID_MAX = 4095


def unpack_vlans(packed: int) -> tuple[int, ...]:
    """The engine's packed VLAN value (``ConnKey.vlan``: ``outer << 12 | inner``, -1 when
    untagged) as tag ids, outermost first.  A leading tag with id 0 (priority tag) cannot
    be told from no tag in the packed form; it is dropped."""
    if packed < 0:
        return ()
    ids: list[int] = []
    while True:
        ids.append(packed & VLAN_ID_MAX)
        packed >>= 12
        if not packed:
            break
    return tuple(reversed(ids))


@dataclass(frozen=True)
class FlowTuple:
    """The connection a checkpoint request is about (the ``tuple`` nest).

    ``family`` is ``socket.AF_INET`` or ``socket.AF_INET6``; ``src``/``dst`` are packed
    addresses (4 or 16 bytes); ``vlans`` are the VLAN ids, outermost first (empty when
    untagged, at most ``TUPLE_MAX_VLANS``).  On the wire (ctnetlink style) addresses are
    ``src4``/``dst4`` (big-endian u32) or ``src6``/``dst6`` (16 bytes), ports big-endian
    u16 and each VLAN tag one ``vlan`` attribute.
    """

    family: int
    proto: int
    src: bytes
    dst: bytes
    sport: int = 0
    dport: int = 0
    vlans: tuple[int, ...] = ()

    def validate(self) -> FlowTuple:
        """Self, if the kernel would accept it; ValueError naming the problem otherwise.
        (Decoded tuples are not validated: a kernel may send what a newer client knows.)"""
        alen = {int(socket.AF_INET): 4, int(socket.AF_INET6): 16}.get(self.family)
        if alen is None:
            raise ValueError(f"tuple family must be AF_INET or AF_INET6, not {self.family}")
        if len(self.src) != alen or len(self.dst) != alen:
            raise ValueError(f"tuple addresses must be {alen} bytes for family {self.family}")
        if len(self.vlans) > TUPLE_MAX_VLANS:
            raise ValueError(f"at most {TUPLE_MAX_VLANS} VLAN tags, got {len(self.vlans)}")
        if any(not 0 <= v <= VLAN_ID_MAX for v in self.vlans):
            raise ValueError(f"VLAN ids are 0..{VLAN_ID_MAX}: {self.vlans}")
        if not (0 <= self.sport <= 0xFFFF and 0 <= self.dport <= 0xFFFF):
            raise ValueError(f"ports are 0..65535: {self.sport}, {self.dport}")
        return self

    @classmethod
    def from_addresses(
        cls, proto: int, src: str, dst: str, *, sport: int = 0, dport: int = 0,
        vlans: tuple[int, ...] = (),
    ) -> FlowTuple:
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        if s.version != d.version:
            raise ValueError(f"address families differ: {src} / {dst}")
        family = socket.AF_INET if s.version == 4 else socket.AF_INET6
        return cls(family, proto, s.packed, d.packed, sport, dport, tuple(vlans)).validate()

    @classmethod
    def from_conn_key(cls, key: ConnKey) -> FlowTuple:
        """From a ``colo_proxy.compare.model.ConnKey`` (IP keys only)."""
        if key.l3 not in (4, 6):
            raise ValueError(f"only IP connections have a tuple (l3={key.l3})")
        family = socket.AF_INET if key.l3 == 4 else socket.AF_INET6
        return cls(family, key.proto, bytes(key.src), bytes(key.dst), key.sport, key.dport,
                   unpack_vlans(key.vlan)).validate()

    def __str__(self) -> str:
        src = str(ipaddress.ip_address(self.src)) if len(self.src) in (4, 16) else self.src.hex()
        dst = str(ipaddress.ip_address(self.dst)) if len(self.dst) in (4, 16) else self.dst.hex()
        text = f"proto {self.proto} {src}:{self.sport} -> {dst}:{self.dport}"
        return text + (" vlan " + ".".join(map(str, self.vlans)) if self.vlans else "")


@dataclass(frozen=True)
class Node:
    """One protected VM's node as the kernel reports it (``id`` is never reused in its
    network namespace; ``index`` is, once the node is gone)."""

    id: int
    index: int
    mode: Mode
    state: State
    owner: int
    stats: dict[str, int] = field(default_factory=dict)
    # The primary datapath's figures (DP_STATS_FIELDS without "dp-"); not part of equality.
    dp_stats: dict[str, int] = field(default_factory=dict, compare=False)
    # The secondary datapath's figures (SEC_STATS_FIELDS without "sec-"); likewise.
    sec_stats: dict[str, int] = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "index": self.index,
            "mode": str(self.mode),
            "state": str(self.state),
            "owner": self.owner,
            "stats": dict(self.stats),
            "dp_stats": dict(self.dp_stats),
            "sec_stats": dict(self.sec_stats),
        }


@dataclass(frozen=True)
class CheckpointNeededEvent:
    """Notification: a node needs a checkpoint (resent while it stays pending)."""

    id: int
    index: int
    mode: Mode
    reason: Reason
    tuple: FlowTuple | None = None
    # Where the first difference is (the engine's Divergence.offset: TCP stream offset
    # or FIFO slot); only in requests about a difference.
    offset: int | None = None


@dataclass(frozen=True)
class NodeGoneEvent:
    """Notification: a node was destroyed (final counters included)."""

    id: int
    index: int
    mode: Mode
    reason: GoneReason
    stats: dict[str, int] = field(default_factory=dict)
    # The datapath's final figures (dp-flushed: held PVM frames let go at loss).  Not
    # part of equality: an event is identified by its node, reason and control counters.
    dp_stats: dict[str, int] = field(default_factory=dict, compare=False)
    sec_stats: dict[str, int] = field(default_factory=dict, compare=False)


Event = CheckpointNeededEvent | NodeGoneEvent
