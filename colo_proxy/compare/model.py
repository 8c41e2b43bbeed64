"""Data types shared by the comparison engine and everything that drives it.

The engine is pure: frames go in (``Engine.push``), time goes in (``Engine.tick``),
checkpoint completions go in (``Engine.checkpoint_done``), and lists of decisions
come out.  Nothing here performs I/O.  See docs/compare.md for the rules.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import NamedTuple


class Side(enum.IntEnum):
    """Which VM produced a frame."""

    PRIMARY = 0
    SECONDARY = 1

    def __str__(self) -> str:
        return self.name.lower()


class Reason(enum.StrEnum):
    """Why the engine asks for a checkpoint."""

    PAYLOAD_MISMATCH = "payload-mismatch"
    """The two sides produced different bytes at the same stream offset / FIFO slot."""
    CONTROL_MISMATCH = "control-mismatch"
    """TCP control (SYN, FIN, RST) disagrees between the sides."""
    TIMEOUT = "timeout"
    """A frame stayed unmatched for longer than ``compare_timeout_ms``."""
    QUEUE_LIMIT = "queue-limit"
    """A connection holds more frames than ``max_queue_per_conn``."""
    MEMORY_LIMIT = "memory-limit"
    """The engine holds more bytes than ``max_held_bytes``."""
    CONNECTION_LIMIT = "connection-limit"
    """More busy connections than ``max_connections``."""


class DropReason(enum.StrEnum):
    """Why a frame is dropped instead of released."""

    MATCHED = "matched"
    """A secondary frame that was compared and consumed (the normal case)."""
    VERIFIED = "verified"
    """A secondary retransmission or pure ACK carrying nothing new to compare."""
    DIVERGED = "diverged"
    """A secondary frame on a connection that already diverged; the checkpoint re-bases it."""
    CHECKPOINT = "checkpoint"
    """A held secondary frame discarded by ``checkpoint_done``."""
    SECONDARY_CONTROL = "secondary-control"
    """A secondary ARP / neighbour-discovery / L2-control frame (never forwarded)."""
    PASSTHROUGH = "passthrough"
    """A secondary frame of a flow that a passthrough rule exempts from comparison."""
    MALFORMED = "malformed"
    """An empty frame (nothing to send or compare)."""
    OVERFLOW = "overflow"
    """A frame beyond the hard limits (twice the soft limits); counted, never silent."""


class ConnKey(NamedTuple):
    """Directional connection key: VLAN id (-1 when untagged), L3 and L4 identity.

    With stacked tags (QinQ) ``vlan`` packs every id, outermost first:
    ``outer << 12 | inner``.

    ``l3`` is 4 or 6 for IP, or the EtherType for non-IP frames (addresses are then
    empty).  Ports are 0 for protocols without ports.  ``frag`` is True for the
    pseudo-connection that carries IP fragments of (src, dst, proto).
    """

    vlan: int
    l3: int
    src: bytes
    dst: bytes
    proto: int
    sport: int
    dport: int
    frag: bool = False

    def __str__(self) -> str:
        return format_key(self)


_PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 47: "gre", 132: "sctp"}


def format_key(key: ConnKey) -> str:
    """Human-readable form, e.g. ``tcp 10.0.0.1:80 -> 10.0.0.2:5555 vlan 7``."""
    if key.l3 in (4, 6):
        src = str(ipaddress.ip_address(key.src))
        dst = str(ipaddress.ip_address(key.dst))
        if key.l3 == 6:
            src, dst = f"[{src}]", f"[{dst}]"
        proto = _PROTO_NAMES.get(key.proto, f"proto-{key.proto}")
        if key.sport or key.dport:
            text = f"{proto} {src}:{key.sport} -> {dst}:{key.dport}"
        else:
            text = f"{proto} {src} -> {dst}"
        if key.frag:
            text += " fragments"
    else:
        text = f"ethertype 0x{key.l3:04x}"
    if key.vlan >= 0:
        text += f" vlan {format_vlan(key.vlan)}"
    return text


def format_vlan(vlan: int) -> str:
    """``7`` for one tag; ``5.7`` (outer.inner) for stacked tags, which the parser packs
    as ``outer << 12 | inner`` (see docs/compare.md, VLAN)."""
    ids = []
    while True:
        ids.append(vlan & 0xFFF)
        vlan >>= 12
        if not vlan:
            break
    return ".".join(str(i) for i in reversed(ids))


class Divergence(NamedTuple):
    """Where two streams first differ.

    ``offset`` is the stream offset (TCP: bytes from the first payload byte after
    the SYN, or from the re-base point after a checkpoint; datagrams: the FIFO
    slot number) and ``primary``/``secondary`` hold up to 64 bytes of each side
    starting at that offset.
    """

    offset: int
    primary: bytes
    secondary: bytes


class Release(NamedTuple):
    """Send this primary frame to the client."""

    tag: object
    key: ConnKey | None
    held_ms: float


class Drop(NamedTuple):
    """Discard this frame."""

    side: Side
    tag: object
    key: ConnKey | None
    reason: DropReason


class CheckpointRequest(NamedTuple):
    """Ask the VMM for a checkpoint.  Emitted at most once until ``checkpoint_done``."""

    reason: Reason
    key: ConnKey | None
    detail: str
    time_ms: float
    divergence: Divergence | None = None


Decision = Release | Drop | CheckpointRequest


@dataclass(frozen=True)
class PassthroughRule:
    """Flows matching a rule are released without comparison.

    A field left as None matches anything.  ``net`` matches the source or the
    destination address; ``port`` matches the source or destination port, so a
    rule covers both directions of a flow.
    """

    proto: int | None = None
    net: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None

    def matches(self, key: ConnKey) -> bool:
        if self.proto is not None and key.proto != self.proto:
            return False
        if self.port is not None and self.port not in (key.sport, key.dport):
            return False
        if self.net is not None:
            if key.l3 != self.net.version:
                return False
            src = ipaddress.ip_address(key.src)
            dst = ipaddress.ip_address(key.dst)
            if src not in self.net and dst not in self.net:
                return False
        return True


@dataclass
class Config:
    """Engine tunables.  Limits are soft: crossing one requests a checkpoint; crossing
    twice the limit drops (and counts) the frame."""

    compare_timeout_ms: float = 3000.0
    max_queue_per_conn: int = 1024
    max_held_bytes: int = 64 * 1024 * 1024
    max_connections: int = 65536
    passthrough: tuple[PassthroughRule, ...] = ()


@dataclass
class Counters:
    """Engine-wide counters.  All monotonically increasing except the ``*_now`` gauges."""

    frames: list[int] = field(default_factory=lambda: [0, 0])
    """Frames pushed, indexed by Side."""
    bytes: list[int] = field(default_factory=lambda: [0, 0])
    released: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    pairs_matched: int = 0
    bytes_compared: int = 0
    checkpoint_requests: dict[str, int] = field(default_factory=dict)
    requests_suppressed: int = 0
    checkpoints_done: int = 0
    passthrough: int = 0
    control_passed: int = 0
    malformed: int = 0
    overflow: int = 0
    connections_evicted: int = 0
    connections_now: int = 0
    held_frames_now: int = 0
    held_bytes_now: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "frames": {"primary": self.frames[0], "secondary": self.frames[1]},
            "bytes": {"primary": self.bytes[0], "secondary": self.bytes[1]},
            "released": self.released,
            "dropped": dict(self.dropped),
            "pairs_matched": self.pairs_matched,
            "bytes_compared": self.bytes_compared,
            "checkpoint_requests": dict(self.checkpoint_requests),
            "requests_suppressed": self.requests_suppressed,
            "checkpoints_done": self.checkpoints_done,
            "passthrough": self.passthrough,
            "control_passed": self.control_passed,
            "malformed": self.malformed,
            "overflow": self.overflow,
            "connections_evicted": self.connections_evicted,
            "connections_now": self.connections_now,
            "held_frames_now": self.held_frames_now,
            "held_bytes_now": self.held_bytes_now,
        }


@dataclass
class ConnStats:
    """Per-connection view for reports (``colo-proxy diff``, the demo's live view)."""

    key: ConnKey
    frames_matched: int = 0
    bytes_matched: int = 0
    held_primary: int = 0
    held_secondary: int = 0
    checkpoint_requests: int = 0
    first_divergence: Divergence | None = None
    retired: bool = False
    """The connection closed and left the table (``Engine.connections()`` lists it for
    ``RETIRED_VISIBLE_MS`` more; a late frame brings it back)."""
