"""Frame classification rules (docs/compare.md, "Parsing") and the shared test helpers.

The helpers (frame builders with scapy, a recording harness) are imported by the other
``test_compare_*`` modules.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from colo_proxy.compare import (
    CheckpointRequest,
    Config,
    ConnKey,
    Decision,
    Drop,
    DropReason,
    Engine,
    Release,
    Side,
)
from colo_proxy.compare import parse as kinds
from colo_proxy.compare.model import format_key
from colo_proxy.compare.parse import parse

P = Side.PRIMARY
S = Side.SECONDARY
GUEST4, CLIENT4 = "10.0.0.1", "10.0.0.2"
GUEST6, CLIENT6 = "fd00::1", "fd00::2"
MAC_G, MAC_C = "52:54:00:00:00:01", "52:54:00:00:00:02"


def eth(l3: Packet, vlan: int | None = None, outer: int | None = None) -> Packet:
    frame: Packet = Ether(src=MAC_G, dst=MAC_C)
    if outer is not None:
        frame = frame / Dot1AD(vlan=outer)
    if vlan is not None:
        frame = frame / Dot1Q(vlan=vlan)
    return frame / l3


def ip(v6: bool = False, **kw: Any) -> Packet:
    if v6:
        return IPv6(src=kw.pop("src", GUEST6), dst=kw.pop("dst", CLIENT6), **kw)
    return IP(src=kw.pop("src", GUEST4), dst=kw.pop("dst", CLIENT4), **kw)


def tcp(seq: int, data: bytes = b"", flags: str = "PA", ack: int = 1, *, sport: int = 80,
        dport: int = 5555, v6: bool = False, vlan: int | None = None,
        ip_kw: dict[str, Any] | None = None, **tcp_kw: Any) -> bytes:
    """A guest->client TCP frame."""
    seg = TCP(sport=sport, dport=dport, seq=seq % (1 << 32), ack=ack % (1 << 32), flags=flags,
              **tcp_kw)
    pkt = eth(ip(v6, **(ip_kw or {})) / seg, vlan)
    if data:
        pkt = pkt / Raw(data)
    return bytes(pkt)


def udp(data: bytes, *, sport: int = 5353, dport: int = 9999, v6: bool = False,
        vlan: int | None = None, ip_kw: dict[str, Any] | None = None, **udp_kw: Any) -> bytes:
    return bytes(eth(ip(v6, **(ip_kw or {})) / UDP(sport=sport, dport=dport, **udp_kw)
                     / Raw(data), vlan))


def key_tcp(sport: int = 80, dport: int = 5555, v6: bool = False, vlan: int = -1) -> ConnKey:
    src, dst = (GUEST6, CLIENT6) if v6 else (GUEST4, CLIENT4)
    return ConnKey(vlan, 6 if v6 else 4, ipaddress.ip_address(src).packed,
                   ipaddress.ip_address(dst).packed, 6, sport, dport)


def summary(decisions: list[Decision]) -> list[tuple[Any, ...]]:
    """Decisions as short tuples: ("release", tag), ("drop", tag, reason), ("checkpoint", r)."""
    out: list[tuple[Any, ...]] = []
    for d in decisions:
        if isinstance(d, Release):
            out.append(("release", d.tag))
        elif isinstance(d, Drop):
            out.append(("drop", d.tag, d.reason))
        else:
            out.append(("checkpoint", d.reason))
    return out


class Harness:
    """An engine plus a clock and a log of every decision."""

    def __init__(self, **config: Any) -> None:
        self.engine = Engine(Config(**config))
        self.now = 0.0
        self.log: list[Decision] = []

    def _run(self, decisions: list[Decision]) -> list[tuple[Any, ...]]:
        self.log.extend(decisions)
        return summary(decisions)

    def p(self, frame: bytes, tag: object, dt: float = 1.0, vnet: int = 0) -> list[tuple[Any, ...]]:
        self.now += dt
        return self._run(self.engine.push(P, frame, self.now, tag, vnet))

    def s(self, frame: bytes, tag: object, dt: float = 1.0, vnet: int = 0) -> list[tuple[Any, ...]]:
        self.now += dt
        return self._run(self.engine.push(S, frame, self.now, tag, vnet))

    def tick(self, dt: float) -> list[tuple[Any, ...]]:
        self.now += dt
        return self._run(self.engine.tick(self.now))

    def checkpoint_done(self, dt: float = 1.0) -> list[tuple[Any, ...]]:
        self.now += dt
        return self._run(self.engine.checkpoint_done(self.now))

    @property
    def released(self) -> list[object]:
        return [d.tag for d in self.log if isinstance(d, Release)]

    @property
    def requests(self) -> list[CheckpointRequest]:
        return [d for d in self.log if isinstance(d, CheckpointRequest)]

    def dropped(self, reason: DropReason | None = None) -> list[object]:
        return [d.tag for d in self.log
                if isinstance(d, Drop) and (reason is None or d.reason == reason)]

    def assert_consistent(self) -> None:
        assert_counters_consistent(self.engine)


def assert_counters_consistent(engine: Engine) -> None:
    """Every frame pushed is released, dropped or still held; gauges match the table."""
    st = engine.stats
    assert sum(st.frames) == st.released + sum(st.dropped.values()) + st.held_frames_now
    assert st.held_frames_now >= 0
    assert st.held_bytes_now >= 0
    conns = [c for c in engine.connections() if not c.retired]
    assert st.connections_now == len(conns)
    assert st.held_frames_now == sum(c.held_primary + c.held_secondary for c in conns)
    if st.held_frames_now == 0:
        assert st.held_bytes_now == 0


# ------------------------------------------------------------------------------------------
# parse rules


def test_tcp_key_and_fields() -> None:
    frame = tcp(1000, b"hello", "PA", ack=77)
    kind, key, seq, ack, flags, payload = parse(frame, 0)
    assert kind == kinds.TCP
    assert ConnKey(*key) == key_tcp()
    assert (seq, ack, flags & 0x1F, payload) == (1000, 77, 0x18, b"hello")


def test_vnet_header_is_skipped() -> None:
    frame = tcp(1000, b"hello")
    assert parse(b"\x01" * 12 + frame, 12) == parse(frame, 0)


def test_ethernet_padding_is_not_payload() -> None:
    frame = tcp(1000, b"hi")
    padded = frame + b"\xaa" * (60 - len(frame) + 10)
    assert parse(padded, 0)[5] == b"hi"
    assert parse(udp(b"x") + b"\x55" * 20, 0)[2] == parse(udp(b"x") + b"\x00" * 20, 0)[2]


@pytest.mark.parametrize(("vlan", "outer", "expected"), [
    (None, None, -1), (7, None, 7), (7, 5, (5 << 12) | 7), (0, None, 0)])
def test_vlan_is_part_of_the_key(vlan: int | None, outer: int | None, expected: int) -> None:
    frame = bytes(eth(ip() / TCP(sport=80, dport=5555), vlan, outer))
    key = ConnKey(*parse(frame, 0)[1])
    assert key.vlan == expected
    if outer is not None:
        assert format_key(key).endswith("vlan 5.7")


def test_ipv6_extension_headers_are_walked() -> None:
    l4 = TCP(sport=80, dport=5555, seq=5, flags="PA") / Raw(b"data")
    chain = (IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt()
             / IPv6ExtHdrFragment(offset=0, m=0) / l4)  # atomic fragment: a whole packet
    frame = bytes(eth(ip(v6=True) / chain))
    kind, key, seq, _ack, _flags, payload = parse(frame, 0)
    assert kind == kinds.TCP
    assert ConnKey(*key) == key_tcp(v6=True)
    assert (seq, payload) == (5, b"data")


def test_fragments_get_a_pseudo_connection() -> None:
    frame = bytes(eth(IP(src=GUEST4, dst=CLIENT4, flags="MF", frag=0, proto=17) / Raw(b"x" * 16)))
    kind, key, data, malformed, _, _ = parse(frame, 0)
    assert kind == kinds.FIFO and not malformed
    assert data == b"\x20\x00" + b"x" * 16  # MF, offset 0, then the fragment's bytes
    assert ConnKey(*key).frag and ConnKey(*key).proto == 17
    assert (ConnKey(*key).sport, ConnKey(*key).dport) == (0, 0)
    six = bytes(eth(ip(v6=True) / IPv6ExtHdrFragment(offset=3, m=1, nh=17, id=9) / Raw(b"y" * 8)))
    kind6, key6, data6, *_ = parse(six, 0)
    assert kind6 == kinds.FIFO and ConnKey(*key6).frag and ConnKey(*key6).l3 == 6
    assert data6 == (3 * 8 + 1).to_bytes(2, "big") + b"y" * 8


@pytest.mark.parametrize("frame", [
    bytes(Ether(src=MAC_G, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=GUEST4, pdst=CLIENT4)),
    bytes(eth(ip(v6=True, dst="ff02::2") / ICMPv6ND_RS())),
    bytes(eth(ip(v6=True) / ICMPv6ND_NS(tgt=CLIENT6))),
    bytes(eth(ip(v6=True) / ICMPv6ND_RA())),
    bytes(Ether(src=MAC_G, dst="01:80:c2:00:00:0e", type=0x88CC) / Raw(b"\x02\x07lldp")),
    bytes(Ether(src=MAC_G, dst="01:80:c2:00:00:00") / Raw(b"\x42\x42\x03stp-bpdu")),
], ids=["arp", "nd-rs", "nd-ns", "nd-ra", "lldp", "stp"])
def test_control_frames(frame: bytes) -> None:
    assert parse(frame, 0)[0] == kinds.CONTROL


@pytest.mark.parametrize(("frame", "vnet"), [
    (b"", 0), (b"\x00" * 12, 12)], ids=["empty", "only-vnet-header"])
def test_empty(frame: bytes, vnet: int) -> None:
    assert parse(frame, vnet)[0] == kinds.EMPTY


def _corrupt(frame: bytes, at: int, value: int) -> bytes:
    return frame[:at] + bytes([value]) + frame[at + 1:]


@pytest.mark.parametrize(("frame", "vnet"), [
    (b"\x01\x02\x03", 0),  # runt
    (tcp(1, b"abc"), 500),  # vnet header longer than the frame
    (tcp(1, b"abc")[:30], 0),  # truncated IP header
    (_corrupt(tcp(1, b"abc"), 17, 0xFF), 0),  # IP total length beyond the frame
    (_corrupt(tcp(1, b"abc"), 14, 0x43), 0),  # IHL 3
    (_corrupt(tcp(1, b"abc"), 14 + 20 + 12, 0xF0), 0),  # TCP data offset beyond the packet
    (tcp(1, b"", v6=True)[:50], 0),  # truncated IPv6
])
def test_malformed_is_compared_opaquely(frame: bytes, vnet: int) -> None:
    kind, key, data, malformed, *_ = parse(frame, vnet)
    assert (kind, malformed) == (kinds.FIFO, True)
    assert ConnKey(*key).src == b""
    assert data == (frame[vnet:] if vnet <= len(frame) else frame)


def test_udp_and_icmp_compared_bytes_skip_checksums() -> None:
    a = parse(udp(b"payload", chksum=0x1234), 0)
    b = parse(udp(b"payload", chksum=0), 0)
    assert a[2] == b[2] and a[1] == b[1]
    echo = bytes(eth(ip() / ICMP(id=7, seq=1, chksum=0x1111) / Raw(b"ping")))
    echo2 = bytes(eth(ip() / ICMP(id=7, seq=1, chksum=0x2222) / Raw(b"ping")))
    assert parse(echo, 0)[2] == parse(echo2, 0)[2]
    six = bytes(eth(ip(v6=True) / ICMPv6EchoRequest(id=7, seq=1, data=b"ping")))
    assert parse(six, 0)[0] == kinds.FIFO
