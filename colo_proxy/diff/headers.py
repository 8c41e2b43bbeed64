"""Just enough header parsing to select, pair and reassemble captured frames.

No full dissection: a handful of ``struct`` reads per frame (Ethernet, optional
802.1Q tags, IPv4/IPv6, TCP/UDP ports).  Anything else is reported as non-IP
or port-less; nothing here raises on frame content.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ..compare.model import ConnKey

ETH_P_IPV4 = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
_VLAN_TPIDS = (0x8100, 0x88A8)
_IPV6_EXT = (0, 43, 60)  # hop-by-hop, routing, destination options

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10


class Headers(NamedTuple):
    """What the diff needs to know about one Ethernet frame."""

    src_mac: bytes
    dst_mac: bytes
    vlan: int
    l3: int
    """4 or 6 for IP, else the EtherType."""
    src: bytes
    dst: bytes
    proto: int
    sport: int
    dport: int
    frag: bool
    l4: int
    """Offset of the L4 header in the frame (-1 if none)."""
    payload: int
    """Offset of the L4 payload (TCP/UDP) in the frame (-1 if none)."""
    end: int
    """End of the L3 datagram in the frame (Ethernet padding excluded)."""
    seq: int
    ack: int
    flags: int
    arp_spa: bytes
    """ARP sender protocol address (empty for non-ARP frames)."""

    @property
    def key(self) -> ConnKey:
        return ConnKey(self.vlan, self.l3, self.src, self.dst, self.proto,
                       self.sport, self.dport, self.frag)

    @property
    def payload_bytes(self) -> int:
        return self.end - self.payload if self.payload >= 0 else 0


def parse(frame: bytes) -> Headers | None:
    """Parse an Ethernet frame; None if it is shorter than an Ethernet header."""
    if len(frame) < 14:
        return None
    dst_mac, src_mac = frame[0:6], frame[6:12]
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    off = 14
    vlan = -1
    while ethertype in _VLAN_TPIDS and len(frame) >= off + 4:
        tci, ethertype = struct.unpack_from("!HH", frame, off)
        if vlan < 0:
            vlan = tci & 0x0FFF
        off += 4
    if ethertype == ETH_P_IPV4:
        return _ipv4(frame, off, src_mac, dst_mac, vlan)
    if ethertype == ETH_P_IPV6:
        return _ipv6(frame, off, src_mac, dst_mac, vlan)
    spa = b""
    if ethertype == ETH_P_ARP and len(frame) >= off + 28:
        spa = frame[off + 14:off + 18]
    return Headers(src_mac, dst_mac, vlan, ethertype, b"", b"", 0, 0, 0, False,
                   -1, -1, len(frame), 0, 0, 0, spa)


def _ipv4(frame: bytes, off: int, smac: bytes, dmac: bytes, vlan: int) -> Headers | None:
    if len(frame) < off + 20:
        return Headers(smac, dmac, vlan, ETH_P_IPV4, b"", b"", 0, 0, 0, False,
                       -1, -1, len(frame), 0, 0, 0, b"")
    ihl = (frame[off] & 0x0F) * 4
    (total,) = struct.unpack_from("!H", frame, off + 2)
    (fragword,) = struct.unpack_from("!H", frame, off + 6)
    proto = frame[off + 9]
    src, dst = frame[off + 12:off + 16], frame[off + 16:off + 20]
    end = min(len(frame), off + total) if total >= ihl else len(frame)
    frag = bool(fragword & 0x3FFF)  # MF set or non-zero fragment offset
    return _l4(frame, off + max(ihl, 20), end, smac=smac, dmac=dmac, vlan=vlan, l3=4,
               src=src, dst=dst, proto=proto, frag=frag)


def _ipv6(frame: bytes, off: int, smac: bytes, dmac: bytes, vlan: int) -> Headers | None:
    if len(frame) < off + 40:
        return Headers(smac, dmac, vlan, ETH_P_IPV6, b"", b"", 0, 0, 0, False,
                       -1, -1, len(frame), 0, 0, 0, b"")
    (plen,) = struct.unpack_from("!H", frame, off + 4)
    proto = frame[off + 6]
    src, dst = frame[off + 8:off + 24], frame[off + 24:off + 40]
    end = min(len(frame), off + 40 + plen)
    pos = off + 40
    frag = False
    while proto in (*_IPV6_EXT, 44) and pos + 8 <= end:
        nxt = frame[pos]
        if proto == 44:
            frag = True
            pos += 8
        else:
            pos += (frame[pos + 1] + 1) * 8
        proto = nxt
    return _l4(frame, pos, end, smac=smac, dmac=dmac, vlan=vlan, l3=6,
               src=src, dst=dst, proto=proto, frag=frag)


def _l4(frame: bytes, l4: int, end: int, *, smac: bytes, dmac: bytes, vlan: int, l3: int,
        src: bytes, dst: bytes, proto: int, frag: bool) -> Headers:
    sport = dport = seq = ack = flags = 0
    payload = -1
    if not frag and proto in (6, 17) and end >= l4 + 8:
        sport, dport = struct.unpack_from("!HH", frame, l4)
        if proto == 6 and end >= l4 + 20:
            seq, ack = struct.unpack_from("!II", frame, l4 + 4)
            flags = frame[l4 + 13]
            payload = min(end, l4 + (frame[l4 + 12] >> 4) * 4)
        elif proto == 17:
            payload = l4 + 8
    return Headers(smac, dmac, vlan, l3, src, dst, proto, sport, dport, frag,
                   l4, payload, end, seq, ack, flags, b"")
