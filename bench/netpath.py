"""Shared pieces of the namespace-path benchmarks (bench/nfqueue.py, bench/kernel.py).

One topology (colo_proxy.topology): client -> phost -> PVM, with the client's traffic
mirrored to the SVM.  The same deterministic server runs in the PVM and the SVM, so
the SVM's answers equal the PVM's (SYN cookies and no timestamps: same ISN, same
headers).  The workloads run in the client namespace and return {metric: value}.
A datapath is started with ``start_datapath`` (``colo-proxy run KIND``); "plain" is
the nft guard table only (the SVM's output dropped, PVM traffic forwarded).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from colo_proxy.topology import Topology
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
    s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=tcp_conn, args=(c,), daemon=True).start()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:  # root: past rmem_max/wmem_max, so that a burst held by a comparator (which
        # keeps the answers charged to this socket) is not cut short by the buffers
        s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
        s.setsockopt(socket.SOL_SOCKET, 32, 16 << 20)  # SO_SNDBUFFORCE
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("0.0.0.0", int(sys.argv[2])))
    while True:
        d, peer = s.recvfrom(65535); s.sendto(d, peer)
threading.Thread(target=udp, daemon=True).start()
print("up", flush=True)
tcp()
"""


def pct(data: list[float], p: float) -> float:
    if not data:
        return float("nan")
    data = sorted(data)
    return data[min(len(data) - 1, int(p * len(data)))]


def start_servers(topo: Topology) -> list[subprocess.Popen[str]]:
    """The deterministic server in the PVM and the SVM (in that order)."""
    servers: list[subprocess.Popen[str]] = []
    try:
        for ns in (topo.pvm, topo.svm):
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER,
                                     str(PORT_TCP), str(PORT_UDP)],
                                    stdout=subprocess.PIPE, text=True)
            servers.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    except BaseException:
        stop_servers(servers)
        raise
    return servers


def stop_servers(servers: list[subprocess.Popen[str]]) -> None:
    for proc in servers:
        proc.kill()
        proc.wait()


def tcp_bulk(topo: Topology, nbytes: int) -> dict[str, float]:
    def run() -> dict[str, float]:
        with socket.create_connection((topo.vm_ip, PORT_TCP), timeout=60) as s:
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
    """Request/response on one connection: a request line, ``size`` bytes back."""
    def run() -> dict[str, float]:
        lat = []
        with socket.create_connection((topo.vm_ip, PORT_TCP), timeout=60) as s:
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


def udp_rr(topo: Topology, count: int, size: int = 64, flows: int = 1) -> dict[str, float]:
    """``count`` datagrams, one at a time, round-robin over ``flows`` client sockets
    (source ports): each flow is one connection of the comparator."""
    def run() -> dict[str, float]:
        lat = []
        lost = 0
        socks = []
        try:
            for _ in range(flows):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.settimeout(1.0)
                socks.append(s)
            payload = b"u" * size
            start = time.perf_counter()
            for i in range(count):
                s = socks[i % flows]
                t0 = time.perf_counter()
                s.sendto(payload, (topo.vm_ip, PORT_UDP))
                try:
                    s.recv(65536)
                except TimeoutError:
                    lost += 1
                    continue
                lat.append((time.perf_counter() - t0) * 1000)
            elapsed = time.perf_counter() - start
        finally:
            for s in socks:
                s.close()
        return {"req/s": count / elapsed, "p50 ms": pct(lat, 0.5), "p99 ms": pct(lat, 0.99),
                "lost": float(lost)}
    return ns_util.run_in(topo.client, run)


def udp_open_flows(topo: Topology, flows: int, batch: int = 200) -> int:
    """Open ``flows`` new UDP flows (one datagram and its answer each), closing every
    client socket again: what is left is the comparator's idle connection state.
    Returns the answers received."""
    def run() -> int:
        answered = 0
        for first in range(0, flows, batch):
            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                     for _ in range(min(batch, flows - first))]
            try:
                for s in socks:
                    s.settimeout(2.0)
                    s.sendto(b"f" * 32, (topo.vm_ip, PORT_UDP))
                for s in socks:
                    try:
                        s.recv(256)
                        answered += 1
                    except TimeoutError:
                        pass
            finally:
                for s in socks:
                    s.close()
        return answered
    return ns_util.run_in(topo.client, run)


def datapath_argv(kind: str, topo: Topology, events: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", "from colo_proxy.cli import main; main()", "run", kind,
            "--netns", topo.phost, "--pvm-if", topo.phost_pvm_if,
            "--fwd-if", topo.phost_fwd_if, "--events", str(events),
            "--stats-interval", "0.5", *extra]


def start_datapath(kind: str, topo: Topology, events: Path,
                   *extra: str) -> subprocess.Popen[bytes]:
    """``colo-proxy run KIND`` on the topology, once it wrote its ready event."""
    proc = subprocess.Popen(datapath_argv(kind, topo, events, *extra))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if events.exists() and '"ready"' in events.read_text():
            return proc
        if proc.poll() is not None:
            raise SystemExit(f"datapath {kind} exited ({proc.returncode})")
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise SystemExit(f"datapath {kind} not ready")


def stop_datapath(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_events(events: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in events.read_text().splitlines() if x.strip()]


def last_stats(events: Path) -> dict[str, Any]:
    stats = [e for e in read_events(events) if e["event"] == "stats"]
    return stats[-1] if stats else {}


def ratio_table(title: str, modes: list[str], ratios: list[tuple[str, str]],
                rows: list[tuple[str, dict[str, dict[str, float]]]]) -> None:
    """One line per (workload, metric): each mode's value, then each ratio num/den
    and, for latencies (``ms``), the added milliseconds of num over den."""
    print(f"\n{title}")
    labels = [f"{n}/{d}" for n, d in ratios]
    widths = [max(9, len(x) + 2) for x in labels]
    head = f"{'workload':<16}{'metric':<9}" + "".join(f"{m:>11}" for m in modes)
    head += "".join(x.rjust(w) for x, w in zip(labels, widths, strict=True))
    head += "".join(f"+ms {x}".rjust(w + 4) for x, w in zip(labels, widths, strict=True))
    print(head)
    for name, by_mode in rows:
        base = next(iter(by_mode.values()))
        for metric in base:
            vals = {m: by_mode[m][metric] for m in modes if m in by_mode}
            line = f"{name:<16}{metric:<9}"
            line += "".join(f"{vals[m]:>11.3f}" if m in vals else f"{'-':>11}" for m in modes)
            for (num, den), w in zip(ratios, widths, strict=True):
                ok = num in vals and den in vals and vals[den]
                line += f"{vals[num] / vals[den]:>{w}.3f}" if ok else "-".rjust(w)
            if metric.endswith("ms"):
                for (num, den), w in zip(ratios, widths, strict=True):
                    ok = num in vals and den in vals
                    line += f"{vals[num] - vals[den]:>+{w + 4}.3f}" if ok else "-".rjust(w + 4)
            print(line)
