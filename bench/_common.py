"""Shared pieces of the benchmarks: synthetic frame streams, runners, table output.

Every workload is a list of (primary, secondary) Ethernet frames.  The secondary
differs only in IP header noise (TTL, IP ID, IP checksum) that every comparator
must ignore, so all pairs match.  Frames carry valid checksums: one scapy template
per side, then the varying field and its checksum are patched in (RFC 1624
incremental update) so that building 100k frames takes well under a second.
"""

from __future__ import annotations

import math
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # qemu_harness

from qemu_harness.colo_compare import ColoCompareRunner, ColoCompareSpec
from qemu_harness.driver import pipelined
from qemu_harness.process import free_tcp_port, process_cpu_seconds
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from colo_proxy.compare.engine import Engine
from colo_proxy.compare.model import Config, Release, Side
from colo_proxy.qemu.framing import encode

ROOT = Path(__file__).resolve().parent.parent
MAC_P, MAC_C = "52:54:00:00:00:01", "52:54:00:00:00:02"
SERVER, CLIENT = "10.0.0.1", "10.0.0.2"
ETH, IPH = 14, 20


def _fold_add(csum: int, *words: int) -> int:
    """Ones-complement checksum after adding 16-bit ``words`` to a field that was 0."""
    total = (~csum & 0xFFFF) + sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _tcp_template(payload_len: int, ttl: int, ip_id: int) -> bytes:
    pkt = (Ether(src=MAC_P, dst=MAC_C) / IP(src=SERVER, dst=CLIENT, ttl=ttl, id=ip_id)
           / TCP(sport=80, dport=40000, seq=0, ack=1, flags="PA", window=502)
           / bytes(i & 0xFF for i in range(payload_len)))
    return bytes(pkt)


def tcp_stream(count: int, payload_len: int) -> list[tuple[bytes, bytes]]:
    """One TCP flow, ``count`` segments of ``payload_len`` bytes, consecutive seqs."""
    out = []
    off_seq = ETH + IPH + 4
    off_sum = ETH + IPH + 16
    templates = [_tcp_template(payload_len, 64, 1), _tcp_template(payload_len, 63, 999)]
    bases = [struct.unpack_from(">H", t, off_sum)[0] for t in templates]
    for i in range(count):
        seq = (1 + i * payload_len) & 0xFFFFFFFF
        pair = []
        for tmpl, base in zip(templates, bases, strict=True):
            frame = bytearray(tmpl)
            struct.pack_into(">I", frame, off_seq, seq)
            struct.pack_into(">H", frame, off_sum, _fold_add(base, seq >> 16, seq & 0xFFFF))
            pair.append(bytes(frame))
        out.append((pair[0], pair[1]))
    return out


def udp_flows(count: int, payload_len: int, flows: int) -> list[tuple[bytes, bytes]]:
    """``count`` datagrams round-robin over ``flows`` source ports."""
    out = []
    off_sport = ETH + IPH
    off_sum = ETH + IPH + 6
    templates = []
    for ttl, ip_id in ((64, 1), (63, 999)):
        pkt = (Ether(src=MAC_P, dst=MAC_C) / IP(src=SERVER, dst=CLIENT, ttl=ttl, id=ip_id)
               / UDP(sport=0, dport=5353) / bytes(i & 0xFF for i in range(payload_len)))
        templates.append(bytes(pkt))
    base = struct.unpack_from(">H", templates[0], off_sum)[0]
    for i in range(count):
        sport = 10000 + i % flows
        csum = _fold_add(base, sport) or 0xFFFF
        pair = []
        for tmpl in templates:
            frame = bytearray(tmpl)
            struct.pack_into(">H", frame, off_sport, sport)
            struct.pack_into(">H", frame, off_sum, csum)
            pair.append(bytes(frame))
        out.append((pair[0], pair[1]))
    return out


def tcp_connections() -> Callable[[int], tuple[bytes, bytes]]:
    """``make(i)``: one 64 B TCP segment pair on connection ``i`` (client 10.X.Y.Z).

    Connection i talks to client address 10.(2 + i >> 16).(i >> 8 & 255).(i & 255),
    so up to 16M distinct connections can be made.
    """
    templates = []
    for ttl, ip_id in ((64, 1), (63, 999)):
        pkt = (Ether(src=MAC_P, dst=MAC_C) / IP(src=SERVER, dst="10.0.0.0", ttl=ttl, id=ip_id)
               / TCP(sport=80, dport=40000, seq=1, ack=1, flags="PA", window=502)
               / bytes(range(64)))
        templates.append(bytes(pkt))
    off_ipsum, off_dst, off_tcpsum = ETH + 10, ETH + 16, ETH + IPH + 16
    bases = [(struct.unpack_from(">H", t, off_ipsum)[0], struct.unpack_from(">H", t, off_tcpsum)[0])
             for t in templates]

    def make(i: int) -> tuple[bytes, bytes]:
        hi, lo = 2 + (i >> 16), i & 0xFFFF
        pair = []
        for tmpl, (ipsum, tcpsum) in zip(templates, bases, strict=True):
            frame = bytearray(tmpl)
            struct.pack_into(">HH", frame, off_dst, 0x0A00 | hi, lo)
            struct.pack_into(">H", frame, off_ipsum, _fold_add(ipsum, hi, lo))
            struct.pack_into(">H", frame, off_tcpsum, _fold_add(tcpsum, hi, lo))
            pair.append(bytes(frame))
        return pair[0], pair[1]

    return make


@dataclass
class Workload:
    name: str
    pairs: list[tuple[bytes, bytes]]


def workloads(count: int) -> list[Workload]:
    return [
        Workload("TCP 1400 B, 1 flow", tcp_stream(count, 1400)),
        Workload("TCP 64 B, 1 flow", tcp_stream(count, 64)),
        Workload("UDP 64 B, 1000 flows", udp_flows(count, 64, 1000)),
    ]


@dataclass
class Result:
    pairs: int
    released: int
    wall: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.released / self.wall if self.wall > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.released * 1e6 if self.released else float("nan")


BATCH = 32
WINDOW = 256


def bench_config() -> Config:
    return Config(max_connections=1 << 20)


def run_engine(wl: Workload, batch: int = BATCH) -> Result:
    """Our Engine in this process, same interleaving as the socket driver."""
    engine = Engine(bench_config())
    push = engine.push
    pairs = wl.pairs
    released = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        now = time.monotonic() * 1000.0
        for p, _ in chunk:
            for d in push(Side.PRIMARY, p, now, p):
                released += type(d) is Release
        for _, s in chunk:
            for d in push(Side.SECONDARY, s, now, None):
                released += type(d) is Release
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return Result(len(pairs), released, wall, cpu)


def framed_batches(wl: Workload, batch: int = BATCH) -> tuple[list[bytes], list[bytes]]:
    p_b, s_b = [], []
    for i in range(0, len(wl.pairs), batch):
        chunk = wl.pairs[i:i + batch]
        p_b.append(b"".join(encode(p, None) for p, _ in chunk))
        s_b.append(b"".join(encode(s, None) for _, s in chunk))
    return p_b, s_b


def _drive(pid: int, socks: tuple[socket.socket, socket.socket, socket.socket],
           wl: Workload, batches: tuple[list[bytes], list[bytes]]) -> Result:
    """Pipelined run against process ``pid`` over (primary_in, secondary_in, outdev)."""
    pin, sin, out = socks
    cpu0, wall0 = process_cpu_seconds(pid), time.perf_counter()
    released = pipelined(pin, sin, out, p_batches=batches[0], s_batches=batches[1],
                         batch=BATCH, total=len(wl.pairs), window=WINDOW)
    wall = time.perf_counter() - wall0
    return Result(len(wl.pairs), released, wall, process_cpu_seconds(pid) - cpu0)


def run_qemu(wl: Workload, batches: tuple[list[bytes], list[bytes]]) -> Result:
    """QEMU's colo-compare (fresh process), pipelined over its TCP chardevs."""
    with ColoCompareRunner(ColoCompareSpec(notify=False)) as cc:
        return _drive(cc.pid, (cc.primary, cc.secondary, cc.outdev), wl, batches)


def _connect(port: int, deadline: float) -> socket.socket:
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def run_socket_datapath(wl: Workload, batches: tuple[list[bytes], list[bytes]]) -> Result:
    """``colo-proxy run qemu-socket`` (fresh process), same driver as QEMU."""
    ports = [free_tcp_port() for _ in range(3)]
    cmd = [sys.executable, "-c", "from colo_proxy.cli import main; main()",
           "run", "qemu-socket",
           "--max-connections", str(1 << 20),
           "--primary-in", f"tcp:127.0.0.1:{ports[0]},server",
           "--secondary-in", f"tcp:127.0.0.1:{ports[1]},server",
           "--outdev", f"tcp:127.0.0.1:{ports[2]},server"]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                cwd=ROOT)
        socks: list[socket.socket] = []
        try:
            deadline = time.monotonic() + 20
            for port in (ports[2], ports[0], ports[1]):
                socks.append(_connect(port, deadline))
            out, pin, sin = socks
            return _drive(proc.pid, (pin, sin, out), wl, batches)
        finally:
            for sock in socks:
                sock.close()
            stop_process(proc)


@dataclass
class Series:
    results: list[Result] = field(default_factory=list)

    def median(self, get: Callable[[Result], float]) -> float:
        return statistics.median(get(r) for r in self.results)

    def span(self, get: Callable[[Result], float], fmt: str) -> str:
        values = [get(r) for r in self.results]
        if len(values) == 1:
            return format(values[0], fmt)
        return f"{format(min(values), fmt)}-{format(max(values), fmt)}"


def ratio(ours: float, theirs: float) -> str:
    """``ours/theirs`` as ``1.23x``; n/a when a CPU delta was below the clock tick."""
    if not theirs or math.isnan(theirs) or math.isnan(ours):
        return "n/a (CPU below clock tick resolution; use more --pairs)"
    return f"{ours / theirs:.2f}x"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n### {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                          text=True, check=False).stdout.splitlines()
    return (f"{os.cpu_count()} CPUs ({cpu}), Python {sys.version.split()[0]}, "
            f"{qemu[0] if qemu else 'QEMU not found'}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s; always reaped."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..1) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    data = sorted(values)
    return data[max(0, min(len(data) - 1, math.ceil(p * len(data)) - 1))]


def load_line() -> str:
    """The load average now, for the record of a run on a shared machine."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} CPUs)"
