"""The C compare core's parser (kmod/nfnetlink_colo/cmp_parse.c) classifies every
frame exactly like the Python engine's (colo_proxy/compare/parse.py): class, key,
TCP fields and payload, FIFO compared bytes and the malformed flag."""

from __future__ import annotations

import ccore
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, LLC, Dot1AD, Dot1Q, Dot3, Ether
from scapy.packet import Raw
from test_compare_parse import eth, ip, tcp, udp

from colo_proxy.compare.parse import parse

V6 = {"src": "fd00::1", "dst": "fd00::2"}
SEEDS = [
    tcp(1000, b"hello", "PA"), tcp(1000, b"", "SA"), tcp(7, b"x" * 40, "FPA", v6=True),
    tcp(1, b"q", vlan=5), udp(b"datagram"), udp(b"six", v6=True),
    tcp(5, b"opt", options=[("MSS", 1460), ("NOP", None), ("WScale", 7)]),
    bytes(eth(ip() / ICMP() / Raw(b"ping"), vlan=7, outer=5)),
    bytes(eth(ip(v6=True) / ICMPv6EchoRequest(data=b"ping6"))),
    bytes(eth(ip(v6=True) / ICMPv6ND_NS(tgt="fd00::9"))),
    bytes(eth(IPv6(**V6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt()
              / Raw(b"ext-chain"))),
    bytes(eth(IPv6(**V6) / IPv6ExtHdrFragment(offset=0, m=0, id=7) / Raw(b"atomic"))),
    bytes(eth(IPv6(**V6) / IPv6ExtHdrFragment(offset=3, m=1, id=7) / Raw(b"frag6"))),
    bytes(eth(IP(src="10.0.0.1", dst="10.0.0.2", flags="MF", frag=0, proto=17) / Raw(b"f" * 16))),
    bytes(eth(IP(src="10.0.0.1", dst="10.0.0.2", frag=2, proto=6) / Raw(b"tail"))),
    bytes(eth(IP(src="10.0.0.1", dst="10.0.0.2", proto=47, ttl=9, id=3) / Raw(b"gre-ish"))),
    bytes(eth(IP(src="10.0.0.1", dst="10.0.0.2", proto=132) / Raw(b"\x00\x50\x13\x88sctp"))),
    bytes(eth(IP(src="10.0.0.1", dst="10.0.0.2", options=b"\x01\x01\x01\x00") / ICMP())),
    bytes(eth(IPv6(**V6, nh=132) / Raw(b"\x00\x50\x13\x88sctp6"))),
    bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP()),
    bytes(Ether(dst="01:80:c2:00:00:0e", type=0x88CC) / Raw(b"lldp" * 4)),
    bytes(Ether(dst="01:80:c2:00:00:00") / Dot1Q(vlan=3) / Raw(b"stp" * 8)),
    bytes(Dot3(dst="01:00:0c:cc:cc:cc") / LLC() / Raw(b"cdp" * 8)),
    bytes(Ether(type=0x88B5) / Raw(b"local-experimental")),
    bytes(Ether() / Dot1AD(vlan=1) / Dot1AD(vlan=2) / Dot1Q(vlan=3) / Dot1Q(vlan=4)
          / Dot1Q(vlan=5) / Raw(b"five tags")),
    bytes(Ether() / Dot1Q(vlan=0) / Dot1Q(vlan=4095) / IP(dst="10.0.0.2") / Raw(b"prio")),
]


def check(frame: bytes, vnet: int) -> None:
    expected = parse(frame, vnet)
    assert ccore.parse(frame, vnet) == expected, (frame.hex(), vnet)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=160), st.sampled_from([0, 0, 0, 10, 12, 200, -1]))
def test_random_bytes(frame: bytes, vnet: int) -> None:
    check(frame, vnet)


@st.composite
def mangled(draw: st.DrawFn) -> tuple[bytes, int]:
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, len(frame) - 1))
        frame[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        frame = frame[:draw(st.integers(0, len(frame)))]
    vnet = draw(st.sampled_from([0, 0, 12]))
    return bytes(vnet) + bytes(frame), vnet


def test_every_seed_parses_alike() -> None:
    kinds = set()
    for frame in SEEDS:
        for vnet in (0, 12):
            check(bytes(vnet) + frame, vnet)
        kinds.add(parse(frame, 0)[0])
        for cut in range(len(frame) + 1):
            check(frame[:cut], 0)
    assert kinds == {0, 1, 2}  # the seeds reach TCP, FIFO and CONTROL


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mangled())
def test_mangled_valid_frames(case: tuple[bytes, int]) -> None:
    check(*case)
