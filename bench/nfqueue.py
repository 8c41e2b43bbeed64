#!/usr/bin/env python3
"""NFQUEUE datapath vs plain forwarding over the same namespace path, one run.

Both modes use one topology (colo_proxy.topology).  "plain": phost only drops
the SVM's output (the nft guard table) and forwards PVM traffic; "nfqueue":
``colo-proxy run nfqueue`` holds every PVM packet until the SVM's
copy matched.  Workloads: TCP bulk (server -> client), TCP request/response and
UDP request/response; printed as ratio tables.  Run as root:

    .venv/bin/python bench/nfqueue.py [--bulk-mb 20] [--requests 1000]
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from colo_proxy.rules import nft
from colo_proxy.topology import Topology, build
from colo_proxy.topology import netns as ns_util

PORT_TCP, PORT_UDP = 9000, 9001
SERVER = r"""
import socket, sys, threading
BLOCK = bytes((i * 7) & 0xFF for i in range(65536))
def tcp_conn(c):
    with c:
        try:
            for line in c.makefile("rb"):
                n = int(line)
                while n > 0:
                    k = min(n, len(BLOCK))
                    c.sendall(BLOCK[:k])
                    n -= k
        except OSError:
            pass  # the SVM's copy of a connection may be reset; irrelevant here
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8)
    while True:
        c, _ = s.accept()
        threading.Thread(target=tcp_conn, args=(c,), daemon=True).start()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[2])))
    while True:
        d, peer = s.recvfrom(65535); s.sendto(d, peer)
threading.Thread(target=udp, daemon=True).start()
print("up", flush=True)
tcp()
"""


def pct(data: list[float], p: float) -> float:
    data = sorted(data)
    return data[min(len(data) - 1, int(p * len(data)))]


def tcp_bulk(topo: Topology, nbytes: int) -> dict[str, float]:
    def run() -> dict[str, float]:
        with socket.create_connection((topo.vm_ip, PORT_TCP), timeout=30) as s:
            start = time.perf_counter()
            s.sendall(f"{nbytes}\n".encode())
            got = 0
            while got < nbytes:
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise RuntimeError("connection closed early")
                got += len(chunk)
            elapsed = time.perf_counter() - start
        return {"MB/s": nbytes / elapsed / 1e6}
    return ns_util.run_in(topo.client, run)


def tcp_rr(topo: Topology, count: int, size: int = 64) -> dict[str, float]:
    def run() -> dict[str, float]:
        lat = []
        with socket.create_connection((topo.vm_ip, PORT_TCP), timeout=30) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            start = time.perf_counter()
            for _ in range(count):
                t0 = time.perf_counter()
                s.sendall(f"{size}\n".encode())
                got = 0
                while got < size:
                    got += len(s.recv(65536))
                lat.append((time.perf_counter() - t0) * 1000)
            elapsed = time.perf_counter() - start
        return {"req/s": count / elapsed, "p50 ms": pct(lat, 0.5), "p99 ms": pct(lat, 0.99)}
    return ns_util.run_in(topo.client, run)


def udp_rr(topo: Topology, count: int, size: int = 64) -> dict[str, float]:
    def run() -> dict[str, float]:
        lat = []
        lost = 0
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1.0)
        payload = b"u" * size
        start = time.perf_counter()
        for _ in range(count):
            t0 = time.perf_counter()
            s.sendto(payload, (topo.vm_ip, PORT_UDP))
            try:
                s.recv(65536)
            except TimeoutError:
                lost += 1
                continue
            lat.append((time.perf_counter() - t0) * 1000)
        elapsed = time.perf_counter() - start
        s.close()
        return {"req/s": count / elapsed, "p50 ms": pct(lat, 0.5), "p99 ms": pct(lat, 0.99),
                "lost": float(lost)}
    return ns_util.run_in(topo.client, run)


def start_datapath(topo: Topology, events: Path) -> subprocess.Popen[bytes]:
    argv = [str(Path(sys.executable).parent / "colo-proxy"), "run", "nfqueue",
            "--netns", topo.phost, "--pvm-if", topo.phost_pvm_if, "--fwd-if", topo.phost_fwd_if,
            "--events", str(events), "--stats-interval", "1"]
    proc = subprocess.Popen(argv)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if events.exists() and '"ready"' in events.read_text():
            return proc
        if proc.poll() is not None:
            raise SystemExit("datapath exited")
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("datapath not ready")


def table(title: str, rows: list[tuple[str, dict[str, float], dict[str, float]]]) -> None:
    print(f"\n{title}")
    print(f"{'workload':<16}{'metric':<9}{'plain':>12}{'nfqueue':>12}{'ratio':>9}{'added':>10}")
    for name, plain, queued in rows:
        for metric, base in plain.items():
            value = queued[metric]
            ratio = f"{value / base:.3f}" if base else "-"
            added = f"{value - base:+.3f}" if metric.endswith("ms") else ""
            print(f"{name:<16}{metric:<9}{base:>12.3f}{value:>12.3f}{ratio:>9}{added:>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bulk-mb", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    workloads: list[tuple[str, Callable[[Topology], dict[str, float]]]] = [
        ("tcp-bulk", lambda t: tcp_bulk(t, int(args.bulk_mb * 1e6))),
        ("tcp-rr-64B", lambda t: tcp_rr(t, args.requests)),
        ("udp-rr-64B", lambda t: udp_rr(t, args.requests)),
    ]
    results: dict[str, dict[str, dict[str, float]]] = {"plain": {}, "nfqueue": {}}
    topo = build("colot-bench-" + secrets.token_hex(2))
    servers: list[subprocess.Popen[str]] = []
    tmp = Path(tempfile.mkdtemp(prefix="colot-bench-"))
    stats: dict[str, Any] = {}
    try:
        for ns in (topo.pvm, topo.svm):
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER,
                                     str(PORT_TCP), str(PORT_UDP)],
                                    stdout=subprocess.PIPE, text=True)
            servers.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        # Warm-up (ARP, caches) then plain: SVM output dropped by the nft guard only.
        nft.apply(topo.phost_pvm_if, topo.phost_fwd_if, topo.phost)
        udp_rr(topo, 20)
        for name, work in workloads:
            results["plain"][name] = work(topo)
        nft.remove(topo.phost)
        events = tmp / "events.jsonl"
        dp = start_datapath(topo, events)
        try:
            udp_rr(topo, 20)
            for name, work in workloads:
                results["nfqueue"][name] = work(topo)
        finally:
            dp.send_signal(signal.SIGTERM)
            dp.wait(timeout=30)
        lines = [json.loads(x) for x in events.read_text().splitlines()]
        stats = [e for e in lines if e["event"] == "stats"][-1]
        requests = [e for e in lines if e["event"] == "checkpoint-request"]
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        topo.destroy()
    print(f"# bench/nfqueue.py  bulk={args.bulk_mb} MB  requests={args.requests}")
    table("Throughput and latency, plain forwarding vs NFQUEUE datapath (ratio = nfqueue/plain)",
          [(name, results["plain"][name], results["nfqueue"][name]) for name, _ in workloads])
    c = stats["counters"]
    print(f"\nengine: pairs_matched={c['pairs_matched']} bytes_compared={c['bytes_compared']} "
          f"checkpoint_requests={len(requests)} datapath={stats['datapath']}")


if __name__ == "__main__":
    main()
