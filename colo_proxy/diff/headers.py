"""What the diff needs to know about a captured frame, from the engine's own parser.

The connection key, TCP numbers and payload come from :func:`colo_proxy.compare.parse.parse`
(the function the datapaths run), so the diff sees every frame exactly as the engine
does: stacked VLAN tags (802.1Q, 802.1ad, 0x9100) packed into the key, IPv6 extension
headers, fragments, malformed frames.  Only what the engine does not need is read
here: the MAC addresses, the ARP sender address, and where the TCP header sits (to
rewrite it when pairing connections).  Nothing here raises on frame content.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ..compare import parse as engine_parse
from ..compare.model import ConnKey

ETH_P_IPV4 = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

TCP = engine_parse.TCP
FIFO = engine_parse.FIFO
CONTROL = engine_parse.CONTROL


class Headers(NamedTuple):
    """One Ethernet frame as the engine classifies it, plus its L2 addresses."""

    kind: int
    """The engine's class: TCP, FIFO (datagrams, fragments, non-IP, malformed) or CONTROL."""
    key: ConnKey
    """The engine's connection key (VLAN ids packed outermost first)."""
    src_mac: bytes
    dst_mac: bytes
    seq: int
    ack: int
    flags: int
    payload: bytes
    """TCP payload (empty for other frames)."""
    size: int
    """Payload bytes for the report: TCP/UDP payload, the whole frame otherwise."""
    l3: int
    """Offset of the L3 header (after every VLAN tag)."""
    l4: int
    """Offset of the TCP header in the frame (-1 if not TCP)."""
    arp_spa: bytes
    """ARP sender protocol address (empty for non-ARP frames)."""

    @property
    def tcp(self) -> bool:
        return self.kind == TCP

    @property
    def proto(self) -> int:
        return self.key.proto

    @property
    def frag(self) -> bool:
        return self.key.frag

    @property
    def src(self) -> bytes:
        return self.key.src

    @property
    def dst(self) -> bytes:
        return self.key.dst

    @property
    def ip(self) -> bool:
        return self.key.l3 in (4, 6)


def l3_offset(frame: bytes) -> int:
    """Offset just past the Ethernet header and its VLAN tags (as the engine counts them)."""
    off = 12
    tags = 0
    while (len(frame) >= off + 4 and struct.unpack_from("!H", frame, off)[0]
           in engine_parse.VLAN_TPIDS and tags < engine_parse.MAX_VLAN_TAGS):
        off += 4
        tags += 1
    return off + 2


def parse(frame: bytes) -> Headers | None:
    """Classify an Ethernet frame with the engine's parser; None if it is shorter than an
    Ethernet header (nothing to attribute to the VM)."""
    if len(frame) < 14:
        return None
    kind, raw_key, a, b, flags, payload = engine_parse.parse(frame, 0)
    if raw_key is None:
        return None
    key = ConnKey(*raw_key)
    l3 = l3_offset(frame)
    seq = ack = 0
    l4 = -1
    spa = b""
    if kind == TCP:
        seq, ack = a, b
        size = len(payload)
        l4 = frame.find(struct.pack("!HHII", key.sport, key.dport, seq, ack), l3)
    else:
        flags, payload = 0, b""
        compared = a if isinstance(a, bytes) else b""
        size = len(compared) - 6 if key.proto == 17 and not key.frag and key.l3 in (4, 6) \
            else len(frame)
        if key.l3 == ETH_P_ARP and len(frame) >= l3 + 18:
            spa = frame[l3 + 14:l3 + 18]
    return Headers(kind, key, frame[6:12], frame[0:6], seq, ack, flags, payload, size,
                   l3, l4, spa)


def rebuild_tcp(frame: bytes, h: Headers, seq: int, payload: bytes, flags: int) -> bytes:
    """``frame`` (a TCP frame) with another sequence number, payload and flags; the IP
    length follows, the checksums are left as they are (the engine does not read them)."""
    if h.l4 < 0:
        raise ValueError("not a TCP frame")
    doff = (frame[h.l4 + 12] >> 4) * 4
    tcp = bytearray(frame[h.l4:h.l4 + doff])
    struct.pack_into("!I", tcp, 4, seq & 0xFFFFFFFF)
    tcp[13] = flags & 0xFF
    out = bytearray(frame[:h.l4]) + tcp + payload
    l4_len = doff + len(payload)
    if h.key.l3 == 4:
        struct.pack_into("!H", out, h.l3 + 2, h.l4 - h.l3 + l4_len)
    else:
        struct.pack_into("!H", out, h.l3 + 4, h.l4 - h.l3 - 40 + l4_len)
    return bytes(out)
