"""TCP sequence translation for the secondary host (kmod/nfnetlink_colo/xlate.c): the
SVM's numbering becomes the PVM's towards the client, the client's acknowledgements
(and SACK blocks) become the SVM's on the way in, and every edited segment keeps a
valid checksum.  Segments are real TCP/IP packets built with scapy; checksums are
verified by scapy recomputing them."""

from __future__ import annotations

import struct

import ccore
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet, Raw

PASS, HOLD, BAD = ccore.XLATE_PASS, ccore.XLATE_HOLD, ccore.XLATE_BAD
MASK = 0xFFFFFFFF
SVM, CLIENT = "198.18.0.10", "198.18.1.20"


def seg(src: str, dst: str, seq: int, ack: int | None, flags: str,  # noqa: PLR0917
        data: bytes = b"", options: list[tuple[str, object]] | None = None,
        v6: bool = False) -> Packet:
    l3 = IPv6(src="fd00::10", dst="fd00::20") if v6 else IP(src=src, dst=dst)
    tcp = TCP(sport=80 if src == SVM else 40000, dport=40000 if src == SVM else 80,
              seq=seq & MASK, ack=(ack or 0) & MASK, flags=flags, options=options or [])
    pkt: Packet = l3 / tcp
    if data:
        pkt = pkt / Raw(data)
    return l3.__class__(bytes(pkt))  # checksums computed


def from_svm(seq: int, ack: int, flags: str = "A", data: bytes = b"", **kw: object) -> Packet:
    return seg(SVM, CLIENT, seq, ack, flags, data, **kw)  # type: ignore[arg-type]


def to_svm(seq: int, ack: int | None, flags: str = "A", data: bytes = b"",
           **kw: object) -> Packet:
    return seg(CLIENT, SVM, seq, ack, flags, data, **kw)  # type: ignore[arg-type]


def fold(x: int) -> int:
    while x >> 16:
        x = (x & 0xFFFF) + (x >> 16)
    return x


def apply(pkt: Packet, edits: list[tuple[int, int, int]]) -> Packet:
    """Apply the edits to the TCP header with an RFC 1624 checksum update, the way the
    kernel's inet_proto_csum_replace4() does for a complete checksum."""
    l4 = bytearray(bytes(pkt[TCP]))
    csum = struct.unpack_from("!H", l4, 16)[0]
    for off, old, new in edits:
        assert struct.unpack_from("!I", l4, off)[0] == old
        struct.pack_into("!I", l4, off, new)
        s = ~csum & 0xFFFF
        for shift in (16, 0):
            s += (~(old >> shift) & 0xFFFF) + ((new >> shift) & 0xFFFF)
        csum = ~fold(s) & 0xFFFF
    struct.pack_into("!H", l4, 16, csum)
    raw = bytes(pkt)
    return pkt.__class__(raw[:len(raw) - len(l4)] + bytes(l4))


def checksum_ok(pkt: Packet) -> bool:
    clone = pkt.__class__(bytes(pkt))
    sent = clone[TCP].chksum
    del clone[TCP].chksum
    return sent == clone.__class__(bytes(clone))[TCP].chksum


def run(flow: ccore.XlateFlow, direction: str, pkt: Packet) -> tuple[int, Packet]:
    verdict, edits = ccore.xlate(direction, flow, bytes(pkt[TCP]))
    out = apply(pkt, edits)
    assert checksum_ok(out), f"bad checksum after {edits}"
    return verdict, out


def handshake_client_first_synack(c0: int, p0: int, s0: int) -> ccore.XlateFlow:
    """Client-initiated; the SVM's SYN-ACK passes before the client's ACK arrives."""
    flow = ccore.XlateFlow()
    verdict, out = run(flow, "to_svm", to_svm(c0, None, "S"))
    assert (verdict, out[TCP].seq) == (PASS, c0 & MASK)
    verdict, out = run(flow, "from_svm", from_svm(s0, c0 + 1, "SA"))
    assert (verdict, out[TCP].seq) == (PASS, s0 & MASK)  # untranslated, as filter-rewriter
    verdict, out = run(flow, "to_svm", to_svm(c0 + 1, p0 + 1))
    assert (verdict, out[TCP].ack) == (PASS, (s0 + 1) & MASK)
    return flow


@pytest.mark.parametrize(("c0", "p0", "s0"), [
    (1000, 50_000, 9_000_000),
    (MASK - 5, MASK - 2, 3),        # every numbering wraps during the connection
    (7, 3, MASK),
])
def test_client_initiated(c0: int, p0: int, s0: int) -> None:
    flow = handshake_client_first_synack(c0, p0, s0)
    verdict, out = run(flow, "from_svm", from_svm(s0 + 1, c0 + 1, "PA", b"x" * 100))
    assert (verdict, out[TCP].seq, out[TCP].ack) == (PASS, (p0 + 1) & MASK, (c0 + 1) & MASK)
    # The client acks 100 bytes and SACKs a later block, in the PVM's numbering.
    sack = [("SAck", ((p0 + 201) & MASK, (p0 + 301) & MASK)), ("NOP", None), ("NOP", None)]
    verdict, out = run(flow, "to_svm", to_svm(c0 + 1, p0 + 101, options=sack))
    assert verdict == PASS
    assert out[TCP].ack == (s0 + 101) & MASK
    blocks = dict(out[TCP].options)["SAck"]
    assert blocks == ((s0 + 201) & MASK, (s0 + 301) & MASK)
    verdict, out = run(flow, "from_svm", from_svm(s0 + 101, c0 + 1, "FA"))
    assert out[TCP].seq == (p0 + 101) & MASK
    assert flow.translated == 4


def test_client_ack_before_the_svm_synack_is_held() -> None:
    c0, p0, s0 = 10, 20_000, 77_777
    flow = ccore.XlateFlow()
    run(flow, "to_svm", to_svm(c0, None, "S"))
    ack = to_svm(c0 + 1, p0 + 1)
    verdict, out = run(flow, "to_svm", ack)
    assert verdict == HOLD
    # The SVM's SYN-ACK now goes out already in the PVM's numbering.
    verdict, out = run(flow, "from_svm", from_svm(s0, c0 + 1, "SA"))
    assert (verdict, out[TCP].seq) == (PASS, p0)
    verdict, out = run(flow, "to_svm", ack)   # the held ACK, asked again
    assert (verdict, out[TCP].ack) == (PASS, s0 + 1)


def test_svm_initiated() -> None:
    c0, p0, s0 = 123_456, 4_000_000_000, 42
    flow = ccore.XlateFlow()
    verdict, out = run(flow, "from_svm", from_svm(s0, 0, "S"))
    assert (verdict, out[TCP].seq) == (PASS, s0)
    verdict, out = run(flow, "to_svm", to_svm(c0, p0 + 1, "SA"))   # the client's SYN-ACK
    assert (verdict, out[TCP].ack) == (PASS, s0 + 1)
    verdict, out = run(flow, "from_svm", from_svm(s0 + 1, c0 + 1, "PA", b"GET / HTTP/1.0\r\n"))
    assert out[TCP].seq == (p0 + 1) & MASK


def test_ipv6() -> None:
    flow = ccore.XlateFlow()
    run(flow, "from_svm", seg(SVM, CLIENT, 5, 0, "S", v6=True))
    _, out = run(flow, "to_svm", seg(CLIENT, SVM, 9, 1001, "SA", v6=True))
    assert out[TCP].ack == 6
    _, out = run(flow, "from_svm", seg(SVM, CLIENT, 6, 10, "PA", b"v6", v6=True))
    assert out[TCP].seq == 1001


@pytest.mark.parametrize("options", [
    b"\x05\x00" + b"\x00" * 6,              # option length 0
    b"\x05\x0c" + b"\x00" * 6,              # runs past the header
    b"\x05\x0b" + b"\x00" * 9 + b"\x00" * 1,   # not a whole number of blocks
    b"\x01" * 11 + b"\x05",                 # kind without a length byte
])
def test_malformed_options_leave_sack_alone(options: bytes) -> None:
    flow = handshake_client_first_synack(1, 1000, 5000)
    pkt = to_svm(2, 1001)
    raw = bytearray(bytes(pkt[TCP]))
    raw[12] = ((20 + len(options)) // 4) << 4 | (raw[12] & 0x0F)
    tcp_raw = bytes(raw[:20]) + options
    verdict, edits = ccore.xlate("to_svm", flow, tcp_raw)
    assert verdict == PASS
    assert edits == [(8, 1001, 5001)]   # the ack only


@pytest.mark.parametrize("raw", [b"", b"\x00" * 19, b"\x00" * 12 + b"\x40" + b"\x10" + b"\x00" * 6,
                                 b"\x00" * 12 + b"\xf0\x10" + b"\x00" * 6])
def test_unreadable_headers_are_left_alone(raw: bytes) -> None:
    flow = handshake_client_first_synack(1, 1000, 5000)
    for direction in ("to_svm", "from_svm"):
        assert ccore.xlate(direction, flow, raw) == (BAD, [])


U32 = st.integers(0, MASK)


@settings(max_examples=300, deadline=None)
@given(U32, U32, U32, st.integers(0, 1 << 31), st.integers(0, 1 << 31),
       st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(1, 5000)), max_size=3))
def test_numbering_maps_exactly(c0: int, p0: int, s0: int, k: int, a: int,  # noqa: PLR0917
                                blocks: list[tuple[int, int]]) -> None:
    """Any SVM byte k is the PVM's byte k; any ack and SACK edge the client sends in the
    PVM's numbering reaches the SVM in its own; checksums stay valid."""
    flow = handshake_client_first_synack(c0, p0, s0)
    _, out = run(flow, "from_svm", from_svm(s0 + 1 + k, c0 + 1, "PA", b"d"))
    assert out[TCP].seq == (p0 + 1 + k) & MASK
    sack = [("SAck", tuple(v & MASK for b, n in blocks for v in (p0 + 1 + b, p0 + 1 + b + n)))]
    _, out = run(flow, "to_svm", to_svm(c0 + 1, p0 + 1 + a, options=sack if blocks else None))
    assert out[TCP].ack == (s0 + 1 + a) & MASK
    if blocks:
        got = dict(out[TCP].options)["SAck"]
        assert got == tuple(v & MASK for b, n in blocks for v in (s0 + 1 + b, s0 + 1 + b + n))
