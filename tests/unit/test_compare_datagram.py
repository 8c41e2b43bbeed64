"""FIFO comparison of UDP, ICMP, other protocols, fragments and non-IP frames, and the
control-frame policy (docs/compare.md, "Datagrams", "Fragments", "L2 control")."""

from __future__ import annotations

import pytest
from scapy.layers.inet import GRE, ICMP, IP, UDP, fragment
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6ND_NA, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from test_compare_parse import CLIENT4, GUEST4, MAC_C, MAC_G, Harness, eth, ip, udp

from colo_proxy.compare import ConnKey, DropReason, Reason

MATCHED = DropReason.MATCHED
DIVERGED = DropReason.DIVERGED


def test_udp_burst_keeps_fifo_order_without_checkpoints() -> None:
    h = Harness()
    for i in range(1, 4):
        assert h.p(udp(b"datagram %d" % i), f"P{i}") == []
    assert h.s(udp(b"datagram 1"), "S1") == [("release", "P1"), ("drop", "S1", MATCHED)]
    assert h.s(udp(b"datagram 2"), "S2") == [("release", "P2"), ("drop", "S2", MATCHED)]
    assert h.s(udp(b"datagram 3"), "S3") == [("release", "P3"), ("drop", "S3", MATCHED)]
    assert h.requests == []
    h.assert_consistent()


def test_secondary_first() -> None:
    h = Harness()
    assert h.s(udp(b"x"), "S1") == []
    assert h.p(udp(b"x"), "P1") == [("drop", "S1", MATCHED), ("release", "P1")]


def test_udp_mismatch_reports_the_slot() -> None:
    h = Harness()
    for i in range(3):
        h.p(udp(b"same %d" % i), f"P{i}")
        h.s(udp(b"same %d" % i), f"S{i}")
    h.p(udp(b"value=1234"), "P3")
    assert h.s(udp(b"value=1299"), "S3") == [
        ("checkpoint", Reason.PAYLOAD_MISMATCH), ("drop", "S3", DIVERGED)]
    div = h.requests[0].divergence
    assert div is not None
    assert div.offset == 3  # the fourth pair
    assert (div.primary, div.secondary) == (b"34", b"99")
    # Later frames of the flow: primaries held, secondaries dropped until the checkpoint.
    assert h.p(udp(b"later"), "P4") == []
    assert h.s(udp(b"later"), "S4") == [("drop", "S4", DIVERGED)]
    assert h.checkpoint_done() == [("release", "P3"), ("release", "P4")]
    # Re-based: the FIFO starts again at slot 0.
    h.p(udp(b"a"), "P5")
    h.s(udp(b"b"), "S5")
    div = h.requests[-1].divergence
    assert div is not None and div.offset == 0
    h.assert_consistent()


def test_udp_header_noise_and_checksum_are_ignored() -> None:
    h = Harness()
    h.p(udp(b"payload", ip_kw={"ttl": 64, "id": 1}), "P1")
    assert h.s(udp(b"payload", chksum=0, ip_kw={"ttl": 1, "id": 4242, "tos": 0x3}), "S1") == [
        ("release", "P1"), ("drop", "S1", MATCHED)]
    h.p(udp(b"payload", sport=1), "P2")
    h.s(udp(b"payload", sport=1, len=20), "S2")  # a different UDP length field
    assert [r.reason for r in h.requests] == [Reason.PAYLOAD_MISMATCH]


def test_icmp_compares_type_code_rest_of_header_and_payload() -> None:
    h = Harness()
    h.p(bytes(eth(ip(ttl=64) / ICMP(type=0, id=7, seq=1) / Raw(b"ping"))), "P1")
    assert h.s(bytes(eth(ip(ttl=9, id=5) / ICMP(type=0, id=7, seq=1, chksum=1) / Raw(b"ping"))),
               "S1") == [("release", "P1"), ("drop", "S1", MATCHED)]
    h.p(bytes(eth(ip() / ICMP(type=0, id=7, seq=2) / Raw(b"ping"))), "P2")
    h.s(bytes(eth(ip() / ICMP(type=0, id=8, seq=2) / Raw(b"ping"))), "S2")
    assert [r.reason for r in h.requests] == [Reason.PAYLOAD_MISMATCH]


def test_icmpv6_echo() -> None:
    h = Harness()
    h.p(bytes(eth(ip(v6=True, hlim=64) / ICMPv6EchoReply(id=1, seq=1, data=b"pong"))), "P1")
    assert h.s(bytes(eth(ip(v6=True, hlim=3) / ICMPv6EchoReply(id=1, seq=1, data=b"pong"))),
               "S1") == [("release", "P1"), ("drop", "S1", MATCHED)]


def test_other_protocols_mask_ttl_id_ecn_checksum_flow_label() -> None:
    h = Harness()
    h.p(bytes(eth(ip(ttl=64, id=1, tos=0) / GRE() / Raw(b"inner"))), "P1")
    assert h.s(bytes(eth(ip(ttl=7, id=99, tos=0x03, chksum=0xBEEF) / GRE() / Raw(b"inner"))),
               "S1") == [("release", "P1"), ("drop", "S1", MATCHED)]
    h.p(bytes(eth(ip(v6=True, hlim=64, fl=1, tc=0) / GRE() / Raw(b"six"))), "P2")
    assert h.s(bytes(eth(ip(v6=True, hlim=1, fl=0xABCDE, tc=0x01) / GRE() / Raw(b"six"))),
               "S2") == [("release", "P2"), ("drop", "S2", MATCHED)]
    # The DSCP part of TOS is compared.
    h.p(bytes(eth(ip(tos=0) / GRE() / Raw(b"x"))), "P3")
    h.s(bytes(eth(ip(tos=0x20) / GRE() / Raw(b"x"))), "S3")
    assert [r.reason for r in h.requests] == [Reason.PAYLOAD_MISMATCH]


def test_ipv4_fragments_ignore_the_ip_id() -> None:
    big = IP(src=GUEST4, dst=CLIENT4, id=1) / UDP(sport=1, dport=2) / Raw(bytes(range(256)) * 8)
    p_frags = [bytes(Ether(src=MAC_G, dst=MAC_C) / f) for f in fragment(big, fragsize=800)]
    big.id = 2
    s_frags = [bytes(Ether(src=MAC_G, dst=MAC_C) / f) for f in fragment(big, fragsize=800)]
    assert len(p_frags) == 3
    h = Harness()
    for i, f in enumerate(p_frags):
        h.p(f, f"P{i}")
    for i, f in enumerate(s_frags):
        h.s(f, f"S{i}")
    assert h.released == ["P0", "P1", "P2"]
    assert h.requests == []
    (conn,) = h.engine.connections()
    assert conn.key.frag and conn.key.proto == 17
    # A fragment with different payload, or offset, is a mismatch.
    h.p(p_frags[1], "P9")
    h.s(s_frags[2], "S9")
    assert [r.reason for r in h.requests] == [Reason.PAYLOAD_MISMATCH]
    h.assert_consistent()


def test_ipv6_fragments() -> None:
    def frag(ident: int, data: bytes, offset: int, m: int) -> bytes:
        return bytes(eth(IPv6(src="fd00::1", dst="fd00::2")
                         / IPv6ExtHdrFragment(id=ident, offset=offset, m=m, nh=17) / Raw(data)))

    h = Harness()
    h.p(frag(1, b"A" * 64, 0, 1), "P0")
    h.p(frag(1, b"B" * 16, 8, 0), "P1")
    h.s(frag(77, b"A" * 64, 0, 1), "S0")
    h.s(frag(77, b"B" * 16, 8, 0), "S1")
    assert h.released == ["P0", "P1"]
    assert h.requests == []


def test_non_ip_frames_fifo_per_ethertype() -> None:
    h = Harness()
    a = bytes(Ether(src=MAC_G, dst=MAC_C, type=0x88B5) / Raw(b"experimental"))
    b = bytes(Ether(src=MAC_G, dst=MAC_C, type=0x88B6) / Raw(b"other"))
    h.p(a, "PA")
    h.p(b, "PB")
    assert h.s(b, "SB") == [("release", "PB"), ("drop", "SB", MATCHED)]
    assert h.s(a, "SA") == [("release", "PA"), ("drop", "SA", MATCHED)]
    h.p(a, "PA2")
    h.s(bytes(Ether(src=MAC_G, dst=MAC_C, type=0x88B5) / Raw(b"experimentaX")), "SA2")
    assert [r.reason for r in h.requests] == [Reason.PAYLOAD_MISMATCH]
    assert {c.key.l3 for c in h.engine.connections()} == {0x88B5, 0x88B6}


@pytest.mark.parametrize("frame", [
    bytes(Ether(src=MAC_G, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=GUEST4, pdst=CLIENT4)),
    bytes(eth(ip(v6=True) / ICMPv6ND_NA(tgt="fd00::1"))),
    bytes(Ether(src=MAC_G, dst="01:80:c2:00:00:0e", type=0x88CC) / Raw(b"lldp")),
], ids=["arp", "nd", "lldp"])
def test_control_frames_pass_uncompared(frame: bytes) -> None:
    h = Harness()
    assert h.p(frame, "P1") == [("release", "P1")]
    assert h.s(frame, "S1") == [("drop", "S1", DropReason.SECONDARY_CONTROL)]
    assert h.s(frame + b"different", "S2") == [("drop", "S2", DropReason.SECONDARY_CONTROL)]
    assert h.engine.stats.control_passed == 1
    assert h.requests == []
    assert h.engine.stats.connections_now == 0
    h.assert_consistent()


def test_malformed_frames_are_compared_opaquely() -> None:
    h = Harness()
    runt = b"\x01\x02\x03"
    bad_len = bytearray(udp(b"x"))
    bad_len[16:18] = b"\xff\xff"  # IP total length beyond the frame
    assert h.p(runt, "P1") == []
    assert h.p(bytes(bad_len), "P2") == []
    assert h.s(bytes(bad_len), "S2") == [("release", "P2"), ("drop", "S2", MATCHED)]
    assert h.s(runt, "S1") == [("release", "P1"), ("drop", "S1", MATCHED)]
    assert h.p(b"", "P3") == [("drop", "P3", DropReason.MALFORMED)]
    assert h.engine.stats.malformed == 5
    keys = {c.key for c in h.engine.connections()}
    assert ConnKey(-1, 0, b"", b"", 0, 0, 0) in keys
    assert ConnKey(-1, 0x0800, b"", b"", 0, 0, 0) in keys
    # An unparsable primary never escapes unverified.
    h.p(runt + b"\x04", "P4")
    h.s(runt + b"\x05", "S4")
    assert [r.reason for r in h.requests] == [Reason.PAYLOAD_MISMATCH]
    h.assert_consistent()


def test_vnet_header_longer_than_the_frame() -> None:
    h = Harness()
    frame = udp(b"x")
    assert h.p(frame, "P1", vnet=len(frame) + 1) == []
    assert h.s(frame, "S1", vnet=len(frame) + 1) == [("release", "P1"), ("drop", "S1", MATCHED)]
    assert h.engine.stats.malformed == 2
