"""Line up the connections of two independently recorded captures.

In real COLO the secondary sees exactly the client packets the primary sees, so a
connection has the same key (client port) and the client's sequence numbers are the
same on both sides.  Captures recorded separately (two runs of the same client) break
both: the client's ephemeral port and its ISN differ.  This module

* pairs secondary connections whose key has no primary counterpart with the unpaired
  primary connections to the same server endpoint, in order of first appearance, and
* rewrites the secondary VM's output so that it looks like the reply to the primary's
  client: the peer's port, and the ACK number shifted by the difference of the peers'
  ISNs (the VM's own sequence numbers are left alone: the engine handles differing
  VM ISNs, as it must in real COLO).

Only TCP is paired.  With identical client packets (a real COLO pair) nothing changes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from ..compare.model import ConnKey
from .headers import TCP_ACK, TCP_SYN, Headers

Group = tuple[int, int, bytes, bytes, int]


@dataclass
class ConnInfo:
    """A TCP connection as seen in one capture, keyed in the VM-output direction."""

    key: ConnKey
    first: int
    """Position of its first frame (either direction) in the capture."""
    vm_server: bool | None = None
    peer_isns: list[int] = field(default_factory=list)
    """The peer's ISN for each incarnation of the key, in order."""

    @property
    def server_port(self) -> int:
        return self.key.sport if self.vm_server is not False else self.key.dport

    @property
    def group(self) -> Group:
        """Connections that may be paired: same addresses, protocol and server port."""
        k = self.key
        return (k.vlan, k.l3, k.src, k.dst, self.server_port)


def reverse(key: ConnKey) -> ConnKey:
    return key._replace(src=key.dst, dst=key.src, sport=key.dport, dport=key.sport)


def tcp_connections(
    headers: list[Headers | None], is_output: Callable[[Headers], bool]
) -> dict[ConnKey, ConnInfo]:
    """Every TCP connection in a capture, keyed in the VM-output direction."""
    conns: dict[ConnKey, ConnInfo] = {}
    for pos, h in enumerate(headers):
        if h is None or not h.tcp:
            continue
        out = is_output(h)
        key = h.key if out else reverse(h.key)
        info = conns.get(key)
        if info is None:
            info = conns[key] = ConnInfo(key, pos)
        if h.flags & TCP_SYN:
            ack = bool(h.flags & TCP_ACK)
            info.vm_server = ack if out else not ack
            if not out and (not info.peer_isns or info.peer_isns[-1] != h.seq):
                info.peer_isns.append(h.seq)
    return conns


def pair(primary: dict[ConnKey, ConnInfo],
         secondary: dict[ConnKey, ConnInfo]) -> dict[ConnKey, ConnKey]:
    """Map secondary keys without a primary twin to a primary key (by order, per group)."""
    free: dict[Group, list[ConnInfo]] = {}
    for info in sorted(primary.values(), key=lambda i: i.first):
        if info.key not in secondary:
            free.setdefault(info.group, []).append(info)
    mapping: dict[ConnKey, ConnKey] = {}
    for info in sorted(secondary.values(), key=lambda i: i.first):
        if info.key in primary:
            continue
        candidates = free.get(info.group)
        if candidates:
            mapping[info.key] = candidates.pop(0).key
    return mapping


class Normalizer:
    """Rewrites the secondary's VM-output frames into the primary's client space.

    Call it on every secondary frame in capture order (it tracks the peer's SYNs)."""

    def __init__(self, primary: dict[ConnKey, ConnInfo], mapping: dict[ConnKey, ConnKey],
                 is_output: Callable[[Headers], bool]) -> None:
        self._primary = primary
        self._mapping = mapping
        self._is_output = is_output
        self._incarnation: dict[ConnKey, tuple[int, int]] = {}
        """secondary key -> (incarnation number, peer ISN)"""
        self.rewritten = 0

    def __call__(self, h: Headers, data: bytes) -> tuple[Headers, bytes]:
        if not h.tcp or h.l4 < 0:
            return h, data
        if not self._is_output(h):
            if h.flags & TCP_SYN:
                key = reverse(h.key)
                n, isn = self._incarnation.get(key, (-1, -1))
                if isn != h.seq:
                    self._incarnation[key] = (n + 1, h.seq)
            return h, data
        key = h.key
        pkey = self._mapping.get(key, key)
        delta = 0
        if h.flags & TCP_ACK and key in self._incarnation:
            n, isn = self._incarnation[key]
            info = self._primary.get(pkey)
            if info is not None and n < len(info.peer_isns):
                delta = (info.peer_isns[n] - isn) & 0xFFFFFFFF
        if pkey == key and not delta:
            return h, data
        buf = bytearray(data)
        ack = (h.ack + delta) & 0xFFFFFFFF
        struct.pack_into("!HHII", buf, h.l4, pkey.sport, pkey.dport, h.seq, ack)
        self.rewritten += 1
        new_key = h.key._replace(sport=pkey.sport, dport=pkey.dport)
        return h._replace(key=new_key, ack=ack), bytes(buf)
