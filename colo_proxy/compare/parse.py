"""Frame classification: one pass over the headers, no allocation beyond the results.

``parse(frame, vnet_hdr_len)`` returns one of

* ``(TCP, key, seq, ack, flags, payload)``
* ``(FIFO, key, compared_bytes, malformed, 0, b"")``  UDP, ICMP, other IP, fragments,
  non-IP, and anything that cannot be parsed (``malformed`` True)
* ``(CONTROL, key, 0, 0, 0, b"")``  ARP, IPv6 neighbour discovery, LLDP, 01:80:c2
  link-local frames
* ``(EMPTY, None, 0, 0, 0, b"")``  nothing after the virtio-net header

Every result has six items so callers can unpack it in one step.

``key`` is a plain tuple laid out like :class:`~.model.ConnKey` (a NamedTuple compares
and hashes like its plain tuple, so it finds a ConnKey in a dict without building one).
The rules are documented in docs/compare.md; this module never raises on frame content.
"""

# Hot path: positional arguments and plain comparisons are deliberate (speed).
# ruff: noqa: PLR0917

from __future__ import annotations

import struct
from typing import Any

TCP = 0
FIFO = 1
CONTROL = 2
EMPTY = 3

Key = tuple[int, int, bytes, bytes, int, int, int, bool]
Parsed = tuple[Any, ...]  # the shapes above; kept loose for speed

_U16 = struct.Struct("!H").unpack_from
_IP4 = struct.Struct("!BBHHHBB").unpack_from  # ver/ihl tos len id frag ttl proto
_TCP = struct.Struct("!HHIIBB").unpack_from  # sport dport seq ack doff flags
_PORTS = struct.Struct("!HH").unpack_from

ETH_IP4 = 0x0800
ETH_IP6 = 0x86DD
VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100))
MAX_VLAN_TAGS = 4
CONTROL_ETHERTYPES = frozenset((0x0806, 0x8035, 0x88CC))  # ARP, RARP, LLDP
LINK_LOCAL_MAC = b"\x01\x80\xc2\x00\x00"  # 01:80:c2:00:00:xx (STP, LACP, 802.1X, ...)
ND_TYPES = frozenset((133, 134, 135, 136, 137))  # RS, RA, NS, NA, redirect
PORT_PROTOS = frozenset((33, 132, 136))  # DCCP, SCTP, UDP-Lite (TCP/UDP handled apart)
IP6_EXT = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options
IP6_AH = 51
IP6_FRAG = 44
MAX_IP6_EXT = 16
RAW_L3 = 0  # pseudo EtherType of frames too short for Ethernet and of 802.3/LLC frames
_NOADDR = b""


EMPTY_RESULT: Parsed = (EMPTY, None, 0, 0, 0, b"")
# Ethernet type, IPv4 header up to the addresses, and the first four L4 bytes (ports).
_FAST4 = struct.Struct("!12xHBBHHHBB2x4s4sHH").unpack_from
_TCP_REST = struct.Struct("!IIBB").unpack_from  # seq ack doff flags


def _opaque(frame: bytes, off: int, vlan: int, l3: int, malformed: bool) -> Parsed:
    return (FIFO, (vlan, l3, _NOADDR, _NOADDR, 0, 0, 0, False), frame[off:], malformed, 0, b"")


def _control(key: Key) -> Parsed:
    return (CONTROL, key, 0, 0, 0, b"")


def parse(frame: bytes, off: int) -> Parsed:
    """Classify one frame; ``off`` is the virtio-net header length to skip."""
    n = len(frame)
    if off >= 0 and n - off >= 38:
        # Fast path: untagged IPv4 without options or fragmentation, TCP or UDP.
        et, vihl, _tos, total, _ident, frag, _ttl, proto, src, dst, sport, dport = \
            _FAST4(frame, off)
        if et == ETH_IP4 and vihl == 0x45 and not frag & 0x3FFF and frame[off] != 1:
            l3 = off + 14
            end = l3 + total
            if end <= n:
                if proto == 6 and total >= 40:
                    seq, ack, doff, flags = _TCP_REST(frame, l3 + 24)
                    doff = (doff >> 4) << 2
                    if 20 <= doff <= total - 20:
                        return (TCP, (-1, 4, src, dst, 6, sport, dport, False), seq, ack, flags,
                                frame[l3 + 20 + doff : end])
                elif proto == 17 and total >= 28:
                    return (FIFO, (-1, 4, src, dst, 17, sport, dport, False),
                            frame[l3 + 20 : l3 + 26] + frame[l3 + 28 : end], False, 0, b"")
    if off < 0 or off > n:
        if not n:
            return EMPTY_RESULT
        return _opaque(frame, 0, -1, RAW_L3, True)
    if off == n:
        return EMPTY_RESULT
    if n - off < 14:
        return _opaque(frame, off, -1, RAW_L3, True)
    et = _U16(frame, off + 12)[0]
    l3 = off + 14
    vlan = -1
    if et in VLAN_TPIDS:
        tags = 0
        vlan = 0
        while et in VLAN_TPIDS:
            if tags == MAX_VLAN_TAGS or n - l3 < 4:
                return _opaque(frame, off, vlan if tags else -1, et, True)
            vlan = (vlan << 12) | (_U16(frame, l3)[0] & 0xFFF)
            et = _U16(frame, l3 + 2)[0]
            l3 += 4
            tags += 1
    if frame[off] == 1 and frame[off : off + 5] == LINK_LOCAL_MAC:
        return _control((vlan, et if et >= 0x600 else RAW_L3, _NOADDR, _NOADDR, 0, 0, 0, False))
    if et == ETH_IP4:
        return _ip4(frame, off, l3, vlan)
    if et == ETH_IP6:
        return _ip6(frame, off, l3, vlan)
    if et in CONTROL_ETHERTYPES:
        return _control((vlan, et, _NOADDR, _NOADDR, 0, 0, 0, False))
    if et < 0x600:
        return _opaque(frame, off, vlan, RAW_L3, False)
    return _opaque(frame, off, vlan, et, False)


def _ip4(frame: bytes, off: int, l3: int, vlan: int) -> Parsed:
    n = len(frame)
    if n - l3 < 20:
        return _opaque(frame, off, vlan, ETH_IP4, True)
    vihl, _tos, total, _ident, frag, _ttl, proto = _IP4(frame, l3)
    ihl = (vihl & 15) << 2
    end = l3 + total
    if vihl >> 4 != 4 or ihl < 20 or total < ihl or end > n:
        return _opaque(frame, off, vlan, ETH_IP4, True)
    src = frame[l3 + 12 : l3 + 16]
    dst = frame[l3 + 16 : l3 + 20]
    l4 = l3 + ihl
    if frag & 0x3FFF:
        # Fragment offset and MF; DF and the IP ID are not compared.
        head = (frag & 0x3FFF).to_bytes(2, "big")
        return (FIFO, (vlan, 4, src, dst, proto, 0, 0, True), head + frame[l4:end], False, 0, b"")
    if proto == 6:
        return _tcp(frame, off, l4, end, vlan, 4, src, dst, ETH_IP4)
    if proto == 17:
        return _udp(frame, off, l4, end, vlan, 4, src, dst, ETH_IP4)
    if proto == 1:
        return _icmp(frame, off, l4, end, vlan, 4, src, dst, 1, ETH_IP4)
    masked = bytearray(frame[l3:end])
    masked[1] &= 0xFC  # ECN
    masked[4] = masked[5] = 0  # identification
    masked[8] = 0  # TTL
    masked[10] = masked[11] = 0  # header checksum
    sport = dport = 0
    if proto in PORT_PROTOS and end - l4 >= 4:
        sport, dport = _PORTS(frame, l4)
    return (FIFO, (vlan, 4, src, dst, proto, sport, dport, False), bytes(masked), False, 0, b"")


def _ip6(frame: bytes, off: int, l3: int, vlan: int) -> Parsed:
    n = len(frame)
    if n - l3 < 40 or frame[l3] >> 4 != 6:
        return _opaque(frame, off, vlan, ETH_IP6, True)
    end = l3 + 40 + _U16(frame, l3 + 4)[0]
    if end > n:
        return _opaque(frame, off, vlan, ETH_IP6, True)
    nh = frame[l3 + 6]
    src = frame[l3 + 8 : l3 + 24]
    dst = frame[l3 + 24 : l3 + 40]
    p = l3 + 40
    for _ in range(MAX_IP6_EXT):
        if nh in IP6_EXT or nh == IP6_AH:
            if end - p < 8:
                return _opaque(frame, off, vlan, ETH_IP6, True)
            nxt = frame[p]
            p += (frame[p + 1] + 2) << 2 if nh == IP6_AH else (frame[p + 1] + 1) << 3
            nh = nxt
            if p > end:
                return _opaque(frame, off, vlan, ETH_IP6, True)
        elif nh == IP6_FRAG:
            if end - p < 8:
                return _opaque(frame, off, vlan, ETH_IP6, True)
            nxt = frame[p]
            fo = _U16(frame, p + 2)[0] & 0xFFF9  # offset (13 bits) and M; reserved bits out
            if fo:
                data = fo.to_bytes(2, "big") + frame[p + 8 : end]
                return (FIFO, (vlan, 6, src, dst, nxt, 0, 0, True), data, False, 0, b"")
            p += 8  # atomic fragment: a whole packet, parse on
            nh = nxt
        else:
            break
    else:
        return _opaque(frame, off, vlan, ETH_IP6, True)
    if nh == 6:
        return _tcp(frame, off, p, end, vlan, 6, src, dst, ETH_IP6)
    if nh == 17:
        return _udp(frame, off, p, end, vlan, 6, src, dst, ETH_IP6)
    if nh == 58:
        if end - p >= 4 and frame[p] in ND_TYPES:
            return _control((vlan, 6, src, dst, 58, 0, 0, False))
        return _icmp(frame, off, p, end, vlan, 6, src, dst, 58, ETH_IP6)
    masked = bytearray(frame[l3:end])
    masked[1] &= 0xC0  # ECN bits and the flow label's top nibble
    masked[2] = masked[3] = 0  # flow label
    masked[7] = 0  # hop limit
    sport = dport = 0
    if nh in PORT_PROTOS and end - p >= 4:
        sport, dport = _PORTS(frame, p)
    return (FIFO, (vlan, 6, src, dst, nh, sport, dport, False), bytes(masked), False, 0, b"")


def _tcp(
    frame: bytes, off: int, l4: int, end: int, vlan: int, l3: int, src: bytes, dst: bytes, et: int
) -> Parsed:
    if end - l4 < 20:
        return _opaque(frame, off, vlan, et, True)
    sport, dport, seq, ack, doff, flags = _TCP(frame, l4)
    doff = (doff >> 4) << 2
    if doff < 20 or l4 + doff > end:
        return _opaque(frame, off, vlan, et, True)
    return (TCP, (vlan, l3, src, dst, 6, sport, dport, False), seq, ack, flags,
            frame[l4 + doff : end])


def _udp(
    frame: bytes, off: int, l4: int, end: int, vlan: int, l3: int, src: bytes, dst: bytes, et: int
) -> Parsed:
    if end - l4 < 8:
        return _opaque(frame, off, vlan, et, True)
    sport, dport = _PORTS(frame, l4)
    # Ports and length, then everything up to the IP end; the checksum is skipped.
    return (FIFO, (vlan, l3, src, dst, 17, sport, dport, False),
            frame[l4 : l4 + 6] + frame[l4 + 8 : end], False, 0, b"")


def _icmp(
    frame: bytes,
    off: int,
    l4: int,
    end: int,
    vlan: int,
    l3: int,
    src: bytes,
    dst: bytes,
    proto: int,
    et: int,
) -> Parsed:
    if end - l4 < 4:
        return _opaque(frame, off, vlan, et, True)
    # Type and code, then the rest of the header and the payload; the checksum is skipped.
    return (FIFO, (vlan, l3, src, dst, proto, 0, 0, False),
            frame[l4 : l4 + 2] + frame[l4 + 4 : end], False, 0, b"")
