"""The qemu-socket datapath's read and write path: many frames per read, frames cut by reads.

A plain socket plays QEMU on every endpoint (all in server mode on loopback).  The
frames are real scapy-built UDP datagrams of mixed sizes up to a 60,000-byte one;
the streams are sent in pieces that cut frames (and their length words) apart, with
pauses so that the datapath really reads the pieces separately.  Every primary frame
must come out of outdev once, in order, byte for byte, with the framing outdev uses.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from qemu_harness.driver import OutdevReader
from qemu_harness.process import free_tcp_port
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from colo_proxy.qemu.framing import encode

ROOT = Path(__file__).resolve().parents[2]
SIZES = (1, 18, 64, 700, 1400, 9000)


def _frames(count: int, ttl: int) -> list[bytes]:
    """``count`` datagrams on 50 flows; one of 60,000 bytes in the middle."""
    rng = random.Random(7)
    out = []
    for i in range(count):
        size = 60000 if i == count // 2 else rng.choice(SIZES)
        out.append(bytes(Ether(src="52:54:00:00:00:01", dst="52:54:00:00:00:02")
                         / IP(src="10.0.0.1", dst="10.0.0.2", ttl=ttl, id=i)
                         / UDP(sport=20000 + i % 50, dport=5353)
                         / (bytes([i & 0xFF]) * size)))
    return out


class _Datapath:
    def __init__(self, extra: list[str]) -> None:
        self.ports = [free_tcp_port() for _ in range(3)]
        fd, self.log_path = tempfile.mkstemp(prefix="colot-reads-", suffix=".log")
        pin, sin, out = self.ports
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from colo_proxy.cli import main; main()",
                 "run", "qemu-socket",
                 "--primary-in", f"tcp:127.0.0.1:{pin},server",
                 "--secondary-in", f"tcp:127.0.0.1:{sin},server",
                 "--outdev", f"tcp:127.0.0.1:{out},server", *extra],
                stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT, cwd=ROOT)
        finally:
            os.close(fd)
        self.socks: list[socket.socket] = []

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def connect(self) -> tuple[socket.socket, socket.socket, socket.socket]:
        """(primary_in, secondary_in, outdev), each once the datapath logged it."""
        deadline = time.monotonic() + 20
        names = ("primary_in", "secondary_in", "outdev")
        order = sorted(zip(self.ports, names, strict=True), key=lambda p: p[1] != "outdev")
        for port, name in order:
            while True:
                try:
                    self.socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
                    break
                except OSError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise AssertionError(f"cannot connect to {name}:\n{self.log()}") from None
                    time.sleep(0.05)
            while f"{name}: connected" not in self.log():
                assert time.monotonic() < deadline, self.log()
                time.sleep(0.02)
        out, pin, sin = self.socks
        return pin, sin, out

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.unlink(self.log_path)


@pytest.fixture
def datapath() -> Iterator[type[_Datapath]]:
    started: list[_Datapath] = []

    class Started(_Datapath):
        def __init__(self, extra: list[str]) -> None:
            super().__init__(extra)
            started.append(self)

    try:
        yield Started
    finally:
        for dp in started:
            dp.close()


def _send_in_pieces(sock: socket.socket, data: bytes, cuts: list[int]) -> None:
    """Send ``data`` cut at ``cuts``, pausing so that each piece is a separate read."""
    start = 0
    for cut in [*cuts, len(data)]:
        sock.sendall(data[start:cut])
        start = cut
        time.sleep(0.05)


@pytest.mark.parametrize("vnet", [False, True], ids=["plain", "vnet-hdr"])
def test_frames_cut_by_reads_come_out_whole_and_in_order(datapath: type[_Datapath],
                                                         vnet: bool) -> None:
    dp = datapath(["--vnet-hdr", "all"] if vnet else [])
    pin, sin, out = dp.connect()
    primaries, secondaries = _frames(300, 64), _frames(300, 63)  # TTL differs: ignored
    vlen = 10 if vnet else None
    p_stream = b"".join(encode(bytes(10) + f if vnet else f, vlen) for f in primaries)
    s_stream = b"".join(encode(bytes(10) + f if vnet else f, vlen) for f in secondaries)
    # Cuts inside the length word(s), inside the 60,000-byte frame, and one byte
    # before the end of a frame.
    big_at = p_stream.index(encode(bytes(10) + primaries[150] if vnet else primaries[150],
                                   vlen))
    cuts = [2, 6, 1001, big_at + 3, big_at + 30000, big_at + 50000,
            big_at + len(primaries[150]) + 2, len(p_stream) - 1]
    _send_in_pieces(pin, p_stream, cuts)
    _send_in_pieces(sin, s_stream, [3, 5000, big_at + 1, big_at + 40000])
    got = OutdevReader(out, vnet_hdr=vnet).wait_for(len(primaries), 30.0)
    assert [f.payload[10:] if vnet else f.payload for f in got] == primaries
    assert {f.vnet_hdr_len for f in got} == {10 if vnet else 0}
    log = dp.log()
    assert "skipped" not in log and "oversized" not in log and "stream ended" not in log


def test_many_frames_per_read(datapath: type[_Datapath]) -> None:
    """2,000 pairs written in one go: every released frame once, in order."""
    dp = datapath([])
    pin, sin, out = dp.connect()
    primaries, secondaries = _frames(2000, 64), _frames(2000, 63)
    pin.sendall(b"".join(encode(f, None) for f in primaries))
    sin.sendall(b"".join(encode(f, None) for f in secondaries))
    got = OutdevReader(out).wait_for(len(primaries), 60.0)
    assert [f.payload for f in got] == primaries
    assert dp.proc.poll() is None
    dp.proc.send_signal(signal.SIGTERM)
    assert dp.proc.wait(15) == 0
    assert "framing-errors=0" in dp.log()
    assert "released=2000" in dp.log()
