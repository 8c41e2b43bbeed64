"""SECCOLO robustness: sequence-number wrap and malformed TCP options through the
translation, with the SVM's real stack checking the result (checksums included: frames
from a packet socket carry no checksum offload, so the SVM verifies every edit).

The "client" here is a packet socket on the primary host's end of the forward link,
so the test picks the PVM's ISN: just below 2**32, so the SVM's numbers wrap.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from colo_env import insmod, wait_for
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from sec_topo import CLIENT_IP, CLIENT_MAC, VM_IP, VM_MAC, Capture, SecTopo, in_netns, sec_topology

from colo_proxy.nl import ColoClient, Mode

pytestmark = pytest.mark.kernel

HANG = 120.0
SVC = 7200
CPORT = 45678
C_ISN = 1000
P_ISN = 2**32 - 16  # the PVM's ISN, as the client knows it


@pytest.fixture
def topo(colo_ko: Path) -> Iterator[SecTopo]:
    insmod(colo_ko)
    with sec_topology() as t:
        yield t


def frame(flags: str, seq: int, ack: int, options: list[object] | None = None,
          load: bytes = b"") -> bytes:
    pkt = (Ether(src=CLIENT_MAC, dst=VM_MAC) / IP(src=CLIENT_IP, dst=VM_IP)
           / TCP(sport=CPORT, dport=SVC, flags=flags, seq=seq, ack=ack, window=65535,
                 options=options or []) / load)
    return bytes(pkt)


def test_wrap_and_malformed_options(topo: SecTopo) -> None:
    svm_out = topo.capture_svm_output()
    svm_in = Capture(topo.v, "eth0").start()
    with in_netns(topo.ph):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    raw.bind(("fwd0", 0))
    with in_netns(topo.v):
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((VM_IP, SVC))
    lsock.listen(1)
    lsock.settimeout(HANG)
    socks = [raw, lsock]
    try:
        with ColoClient(netns=topo.sh) as client:
            node = client.proxy_init(Mode.SECONDARY, tap_ifindex=topo.tap_ifindex(),
                                     fwd_ifindex=topo.fwd_ifindex())
            raw.send(frame("S", C_ISN, 0))

            def synack() -> list[int]:
                return [s.seq for s in svm_out.segs(VM_IP)
                        if s.dport == CPORT and s.flags & 0x12 == 0x12]
            wait_for(synack, HANG, "the SVM's SYN-ACK on the forward link")
            s_isn = synack()[0]  # untranslated: the offset is not known yet
            assert s_isn != P_ISN
            # the handshake ACK in the PVM's numbering; a malformed option after a NOP
            # (length beyond the header) must leave the rest alone, not break the ack
            raw.send(frame("A", C_ISN + 1, P_ISN + 1))
            conn, _ = lsock.accept()
            socks.append(conn)
            bad = bytearray(frame("PA", C_ISN + 1, P_ISN + 1,
                                  options=[("NOP", None), ("NOP", None),
                                           ("SAck", (P_ISN + 1, P_ISN + 1))], load=b"hello"))
            # SACK length 10 -> 0xff: beyond the header
            sack_at = 14 + 20 + 20 + 2
            assert bad[sack_at] == 5
            bad[sack_at + 1] = 0xFF
            raw.send(bytes(_fix_checksum(bad)))
            conn.settimeout(HANG)
            assert conn.recv(100) == b"hello"  # ack translated, checksum right
            # a well-formed SACK block: edges translated into the SVM's numbering
            raw.send(frame("A", C_ISN + 6, P_ISN + 1,
                           options=[("NOP", None), ("NOP", None),
                                    ("SAck", (P_ISN + 1, P_ISN + 11))]))

            def sacks() -> list[tuple[int, int]]:
                out = []
                for f in svm_in.snapshot():
                    t = Ether(f).getlayer(TCP)
                    if t is None or t.dport != SVC:
                        continue
                    for name, val in t.options:
                        if name == "SAck":
                            out.append(tuple(val))
                return out
            wait_for(sacks, HANG, "the SACK segment at the SVM")
            assert sacks()[-1] == ((s_isn + 1) % 2**32, (s_isn + 11) % 2**32)
            # the SVM's data crosses 2**32 in the PVM's numbering
            conn.sendall(b"w" * 40)

            def data_seqs() -> list[int]:
                return [s.seq for s in svm_out.segs(VM_IP) if s.dport == CPORT and s.payload]
            wait_for(data_seqs, HANG, "the SVM's data on the forward link")
            assert data_seqs()[0] == (P_ISN + 1) % 2**32
            raw.send(frame("A", C_ISN + 6, (P_ISN + 41) % 2**32))  # acks across the wrap
            wait_for(lambda: client.get(node.index).sec_stats["translated-in"] >= 4, HANG,
                     "four translated segments to the SVM")
            got = client.get(node.index).sec_stats
            assert got["translated-out"] >= 1, got
    finally:
        for s in socks:
            s.close()
        svm_out.stop()
        svm_in.stop()


def _fix_checksum(buf: bytearray) -> bytearray:
    """Recompute the TCP checksum of an IPv4 frame by hand (scapy would re-parse the
    malformed option)."""
    ihl = (buf[14] & 0x0F) * 4
    total = struct.unpack("!H", buf[16:18])[0]
    th = 14 + ihl
    seg = bytearray(buf[th:14 + total])
    seg[16:18] = b"\0\0"
    pseudo = bytes(buf[26:34]) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(seg))
    data = pseudo + bytes(seg) + (b"\0" if len(seg) % 2 else b"")
    acc = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    buf[th + 16:th + 18] = struct.pack("!H", ~acc & 0xFFFF)
    return buf
