#!/usr/bin/env python3
"""The secondary host's kernel datapath (nf_colo, SECCOLO): the SVM's output to the
forward link with TCP sequence translation, against the same path without it, one run
(issue 11 §4).

Three namespaces: ``v`` (the SVM: ``eth0``, no address, so its stack ignores what it
gets), ``sh`` (the secondary host: ``tap0``, the SVM's tap, and ``fwd0``, the forward
link) and ``ph`` (the primary host's end of the forward link, which counts and drops).
trafgen sends the same TCP data segment from the SVM ``--frames`` times per rep, from
one process (PF_PACKET TX ring, no qdisc), and the rate is what reaches ``ph``'s
``fwd0`` per second of trafgen's run.  Modes, interleaved rep by rep:

  plain       no node: ``tc mirred redirect`` from tap0's ingress to fwd0 (what the
              hook replaces: one device to the other)
  untranslated  a secondary node; the segments belong to no flow of it (a connection
              opened before the last checkpoint), so the hook only parses and forwards
  translated  a secondary node; the segments belong to a flow whose handshake it saw
              (client SYN and ACK from ``ph``, the SVM's SYN-ACK from ``v``), with an
              ISN offset != 0: seq rewritten, checksum updated, counted

Figures: frames/s (median of the reps, and their span), translated / untranslated
(the goal: >= 0.95x), the cost per translated frame (the difference of the two modes'
time per frame), and the kernel memory per translated connection (``--conns`` more
handshakes: the growth of the kmalloc caches, SLUB sysfs, over the growth of
``flows``).  The kernel modes need nf_colo loaded (scripts/bench-kernel.sh runs this in
a guest kernel: ``make bench-sec``).  Run as root:

    .venv/bin/python bench/secondary.py [--reps 5] [--frames 200000] [--sizes 64,1400]
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line, print_table
from kernel import module_loaded

from colo_proxy.nl import ColoClient, Mode
from colo_proxy.topology import netns as ns_util

VM_IP, VM_MAC = "10.79.0.2", "52:54:00:00:79:02"
CLIENT_IP, CLIENT_MAC = "10.79.0.3", "52:54:00:00:79:03"
VM_PORT = 8080
ISN_P = 0x10000000  # the PVM's ISN, as the client's handshake ACK tells it
ISN_S = 0x70000000  # the SVM's, from its SYN-ACK: offset 0xa0000000
SLAB = Path("/sys/kernel/slab")


def run(*argv: str) -> str:
    proc = subprocess.run(list(argv), check=False, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"bench-sec: {' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


@dataclass(frozen=True)
class Hosts:
    v: str
    sh: str
    ph: str


@contextmanager
def hosts() -> Iterator[Hosts]:
    tag = secrets.token_hex(4)
    h = Hosts(*(f"colob-{tag}-{n}" for n in ("v", "sh", "ph")))
    try:
        for name in (h.v, h.sh, h.ph):
            ns_util.create(name)
            ns_util.write_sysctls(name, {"net.ipv6.conf.all.disable_ipv6": "1",
                                         "net.ipv6.conf.default.disable_ipv6": "1"})
            run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "-n", h.sh, "link", "add", "tap0", "type", "veth", "peer", "name", "eth0",
            "netns", h.v)
        run("ip", "-n", h.sh, "link", "add", "fwd0", "type", "veth", "peer", "name", "fwd0",
            "netns", h.ph)
        run("ip", "-n", h.v, "link", "set", "eth0", "address", VM_MAC)
        for name, dev in ((h.v, "eth0"), (h.sh, "tap0"), (h.sh, "fwd0"), (h.ph, "fwd0")):
            run("ip", "-n", name, "link", "set", dev, "up")
        yield h
    finally:
        for name in (h.v, h.sh, h.ph):
            ns_util.remove(name)


def ifindex(ns: str, dev: str) -> int:
    return int(json.loads(run("ip", "-n", ns, "-j", "link", "show", dev))[0]["ifindex"])


def rx_packets(ns: str, dev: str) -> int:
    return int(json.loads(run("ip", "-n", ns, "-j", "-s", "link", "show", dev))[0]
               ["stats64"]["rx"]["packets"])


def packet_socket(ns: str, dev: str) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((dev, 0))
        return s
    return ns_util.run_in(ns, make)


def client_frame(cport: int, flags: str, seq: int, ack: int = 0) -> bytes:
    return bytes(Ether(src=CLIENT_MAC, dst=VM_MAC) / IP(src=CLIENT_IP, dst=VM_IP)
                 / TCP(sport=cport, dport=VM_PORT, flags=flags, seq=seq, ack=ack,
                       window=65535))


def svm_frame(cport: int, flags: str, seq: int, ack: int, payload: bytes = b"") -> bytes:
    return bytes(Ether(src=VM_MAC, dst=CLIENT_MAC) / IP(src=VM_IP, dst=CLIENT_IP)
                 / TCP(sport=VM_PORT, dport=cport, flags=flags, seq=seq, ack=ack,
                       window=65535) / payload)


def handshakes(h: Hosts, ports: range) -> None:
    """A client-initiated connection per port, as the secondary node sees it: the
    client's SYN mirrored in on the forward link, the SVM's SYN-ACK, the client's ACK
    (which tells the PVM's ISN).  The node's flow for it then translates."""
    client, svm = packet_socket(h.ph, "fwd0"), packet_socket(h.v, "eth0")
    try:
        for cport in ports:
            client.send(client_frame(cport, "S", 1000))
            svm.send(svm_frame(cport, "SA", ISN_S, 1001))
            client.send(client_frame(cport, "A", 1001, ISN_P + 1))
    finally:
        client.close()
        svm.close()


def trafgen_config(frame: bytes, path: Path) -> Path:
    path.write_text("{ " + ", ".join(f"0x{b:02x}" for b in frame) + " }\n")
    return path


def send(h: Hosts, cfg: Path, frames: int) -> float:
    """trafgen's run time for ``frames`` frames from the SVM, in seconds."""
    t0 = time.perf_counter()
    run("ip", "netns", "exec", h.v, "trafgen", "-o", "eth0", "-i", str(cfg), "-n", str(frames),
        "-P", "1", "--no-sock-mem")
    return time.perf_counter() - t0


def settle(ns: str, dev: str) -> int:
    """The rx count once it stops moving (the backlog drained)."""
    last = rx_packets(ns, dev)
    while True:
        time.sleep(0.2)
        now = rx_packets(ns, dev)
        if now == last:
            return now
        last = now


def kmalloc_bytes() -> int:
    total = 0
    for d in SLAB.glob("kmalloc-*"):
        if d.is_symlink():
            continue
        objects = int((d / "objects").read_text().split()[0])
        total += objects * int((d / "slab_size").read_text().split()[0])
    return total


@dataclass
class Rep:
    frames: int
    received: int
    seconds: float
    translated: int

    @property
    def rate(self) -> float:
        return self.received / self.seconds


class Bench:
    def __init__(self, h: Hosts, tmp: Path, frames: int) -> None:
        self.h, self.tmp, self.frames = h, tmp, frames
        self.client: ColoClient | None = None
        self.index = 0

    def plain_on(self) -> None:
        run("ip", "netns", "exec", self.h.sh, "tc", "qdisc", "add", "dev", "tap0", "clsact")
        run("ip", "netns", "exec", self.h.sh, "tc", "filter", "add", "dev", "tap0", "ingress",
            "matchall", "action", "mirred", "egress", "redirect", "dev", "fwd0")

    def plain_off(self) -> None:
        run("ip", "netns", "exec", self.h.sh, "tc", "qdisc", "del", "dev", "tap0", "clsact")

    def node_on(self) -> None:
        self.client = ColoClient(netns=self.h.sh)
        self.index = self.client.proxy_init(
            Mode.SECONDARY, tap_ifindex=ifindex(self.h.sh, "tap0"),
            fwd_ifindex=ifindex(self.h.sh, "fwd0"), max_connections=1 << 20).index

    def node_off(self) -> None:
        if self.client is not None:
            self.client.proxy_destroy(self.index)
            self.client.close()
            self.client = None

    def sec(self, key: str) -> int:
        assert self.client is not None
        return self.client.get(self.index).sec_stats[key]

    def rep(self, cfg: Path) -> Rep:
        before = rx_packets(self.h.ph, "fwd0")
        out0 = self.sec("translated-out") if self.client else 0
        seconds = send(self.h, cfg, self.frames)
        received = settle(self.h.ph, "fwd0") - before
        out = (self.sec("translated-out") if self.client else 0) - out0
        return Rep(self.frames, received, seconds, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--frames", type=int, default=200_000, help="frames per rep and mode")
    ap.add_argument("--sizes", default="64,1400", help="TCP payload bytes, comma-separated")
    ap.add_argument("--conns", type=int, default=2000,
                    help="handshakes for the memory per translated connection")
    args = ap.parse_args()
    if args.reps < 1 or args.frames < 1 or args.conns < 1:
        raise SystemExit("bench-sec: --reps, --frames and --conns must be >= 1")
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        raise SystemExit(f"bench-sec: --sizes: not a list of numbers: {args.sizes}") from None
    if any(not 0 <= s <= 1400 for s in sizes):
        raise SystemExit("bench-sec: --sizes: each between 0 and 1400")
    if shutil.which("trafgen") is None:
        raise SystemExit("bench-sec: trafgen not found (apt-get install netsniff-ng)")
    if not module_loaded():
        raise SystemExit("bench-sec: nf_colo is not loaded (make bench-sec runs this in a guest)")
    print(f"# bench/secondary.py: {machine_line()}")
    print(f"# {args.reps} reps x {args.frames} frames per mode and size, one trafgen process")

    modes = ("plain", "untranslated", "translated")
    results: dict[tuple[str, int], list[Rep]] = {(m, s): [] for m in modes for s in sizes}
    with hosts() as h, tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        b = Bench(h, tmp, args.frames)
        try:
            b.node_on()
            handshakes(h, range(40000, 40001))
            if b.sec("flows") != 1:
                raise SystemExit(f"bench-sec: the handshake left {b.sec('flows')} flows, not 1")
            b.node_off()
            cfgs = {}
            for s in sizes:
                data = bytes(range(256)) * 6
                cfgs[("translated", s)] = trafgen_config(
                    svm_frame(40000, "PA", ISN_S + 1, 1001, data[:s]), tmp / f"x{s}.cfg")
                cfgs[("untranslated", s)] = trafgen_config(
                    svm_frame(40001, "PA", ISN_S + 1, 1001, data[:s]), tmp / f"u{s}.cfg")
                cfgs[("plain", s)] = cfgs[("translated", s)]
            for rep in range(args.reps):
                for s in sizes:
                    b.plain_on()
                    try:
                        results[("plain", s)].append(b.rep(cfgs[("plain", s)]))
                    finally:
                        b.plain_off()
                    b.node_on()
                    try:
                        handshakes(h, range(40000, 40001))
                        for m in ("untranslated", "translated"):
                            results[(m, s)].append(b.rep(cfgs[(m, s)]))
                    finally:
                        b.node_off()
                print(f"# rep {rep + 1}/{args.reps} done", flush=True)
            for (m, s), reps in results.items():
                # every frame that came through translated was translated, and only then
                ok = all(r.translated >= r.received if m == "translated" else r.translated == 0
                         for r in reps)
                if not ok:
                    raise SystemExit(f"bench-sec: {m} {s} B: translated-out "
                                     f"{[r.translated for r in reps]} for received "
                                     f"{[r.received for r in reps]}")
            memory = conn_memory(b, h, args.conns)
        finally:
            b.node_off()
    report(results, sizes, memory, args.conns)


def conn_memory(b: Bench, h: Hosts, conns: int) -> tuple[float, int]:
    b.node_on()
    try:
        flows0, mem0 = b.sec("flows"), kmalloc_bytes()
        handshakes(h, range(20000, 20000 + conns))
        time.sleep(0.5)
        flows, mem = b.sec("flows") - flows0, kmalloc_bytes() - mem0
        if flows != conns:
            raise SystemExit(f"bench-sec: {conns} handshakes made {flows} flows")
        return mem / flows, flows
    finally:
        b.node_off()


def report(results: dict[tuple[str, int], list[Rep]], sizes: list[int],
           memory: tuple[float, int], conns: int) -> None:
    def med(m: str, s: int) -> float:
        return statistics.median(r.rate for r in results[(m, s)])

    def span(m: str, s: int) -> str:
        rates = [r.rate / 1000 for r in results[(m, s)]]
        return f"{min(rates):.0f}-{max(rates):.0f}"

    rows = []
    for s in sizes:
        lost = {m: sum(r.frames - r.received for r in results[(m, s)]) for m in
                ("plain", "untranslated", "translated")}
        rows.append([f"{s} B", *(f"{med(m, s) / 1000:.0f}k ({span(m, s)}k)"
                                  for m in ("plain", "untranslated", "translated")),
                     f"{med('translated', s) / med('untranslated', s):.3f}x",
                     f"{med('translated', s) / med('plain', s):.2f}x",
                     f"{1e9 / med('translated', s) - 1e9 / med('untranslated', s):.0f} ns",
                     " / ".join(str(lost[m]) for m in ("plain", "untranslated", "translated"))])
    print_table("SVM -> forward link, frames/s (median, span of reps)",
                ["payload", "plain (tc redirect)", "untranslated", "translated",
                 "translated / untranslated", "translated / plain", "cost per translated frame",
                 "not received (p/u/t)"], rows)
    per, flows = memory
    print_table("kernel memory per translated connection",
                ["connections", "kmalloc growth per connection"],
                [[f"{flows} (of {conns} handshakes)", f"{per:.0f} B"]])
    goal = all(med("translated", s) / med("untranslated", s) >= 0.95 for s in sizes)
    print(f"\ngoal translated >= 0.95x untranslated: {'met' if goal else 'MISSED'}")


if __name__ == "__main__":
    main()
