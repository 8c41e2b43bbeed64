#!/usr/bin/env python3
"""Kernel datapath (nf_colo, PMYCOLO) vs plain forwarding vs NFQUEUE vs QEMU's
colo-compare, one run (issue 10 §6).

Modes over one namespace topology (bench/netpath.py, colo_proxy.topology), the same
deterministic server in the PVM and the SVM:

  a  plain    phost forwards, the nft guard drops the SVM's output
  b  kernel   ``colo-proxy run kernel``: an nf_colo primary node on phost's to-pvm
              (the PVM's tap) and to-shost (the forward link)
  c  nfqueue  ``colo-proxy run nfqueue``
  d  qemu     QEMU's colo-compare (``-M none``, bench/_common.py) fed synthetic frame
              pairs; the kernel node is fed the same pairs on its two devices (AF_PACKET
              in the PVM's and the secondary host's namespaces): pairs/s, b/d

Figures: TCP bulk, TCP request/response at 64 B and 1400 B, UDP request/response on
one flow and over ``--flows`` flows, latency p50/p99 (added = mode minus plain);
state per idle tracked connection after opening ``--conns`` more UDP flows (kernel:
the module's slab caches, nfqueue: the datapath process's RSS); the release burst:
``--burst`` PVM frames held (SVM stopped), then one DO_CHECKPOINT, time until the
client has them all.  The kernel modes need nf_colo loaded (scripts/bench-kernel.sh
runs this in a guest kernel); without it they are skipped.  Run as root:

    .venv/bin/python bench/kernel.py [--modes plain,kernel,nfqueue,qemu] [--bulk-mb 4]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import netpath as npth

from colo_proxy.rules import nft
from colo_proxy.topology import Topology, build
from colo_proxy.topology import netns as ns_util

MODES = {"plain": "a", "kernel": "b", "nfqueue": "c", "qemu": "d"}
CACHES = ("colo_dp_conn", "colo_cmp_held")
SLAB = Path("/sys/kernel/slab")
Work = Callable[[Topology], dict[str, float]]


def module_loaded() -> bool:
    try:
        return any(line.split()[0] == "nf_colo"
                   for line in Path("/proc/modules").read_text().splitlines())
    except OSError:
        return False


# -- kernel figures -------------------------------------------------------------
def slab(name: str) -> dict[str, Any]:
    """One slab cache's figures (SLUB sysfs); ``merged``: it shares a cache with others
    (its counts then include theirs; boot with slub_nomerge to separate them)."""
    d = SLAB / name
    if not d.exists():
        return {}
    read = lambda f: int((d / f).read_text().split()[0])  # noqa: E731
    return {"object_size": read("object_size"), "slab_size": read("slab_size"),
            "objects": read("objects"), "merged": d.is_symlink() and read("aliases") > 0}


def slab_bytes() -> int:
    """Bytes in use in the module's caches (objects x slab_size)."""
    total = 0
    for name in CACHES:
        s = slab(name)
        total += s.get("objects", 0) * s.get("slab_size", 0)
    return total


def meminfo(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def node_stats(topo: Topology) -> dict[str, int]:
    """The dp figures of the (only) node in phost."""
    from colo_proxy.nl import ColoClient

    with ColoClient(netns=topo.phost) as c:
        nodes = c.dump()
    return dict(nodes[0].dp_stats) if nodes else {}


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class OwnNode:
    """A primary node this process owns (for the burst and the frame feed)."""

    def __init__(self, topo: Topology, **limits: int) -> None:
        from colo_proxy.nl import ColoClient

        tap, fwd = ns_util.run_in(topo.phost, lambda: (
            socket.if_nametoindex(topo.phost_pvm_if), socket.if_nametoindex(topo.phost_fwd_if)))
        self.client = ColoClient(netns=topo.phost)
        try:
            self.index = self.client.proxy_init("primary", tap_ifindex=tap, fwd_ifindex=fwd,
                                                **limits).index
        except BaseException:
            self.client.close()
            raise

    def dp(self) -> dict[str, int]:
        return dict(self.client.get(self.index).dp_stats)

    def close(self) -> None:
        try:
            self.client.proxy_destroy(self.index)
        finally:
            self.client.close()


def wait_for(get: Callable[[], int], target: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    value = get()
    while value < target and time.monotonic() < deadline:
        time.sleep(0.01)
        value = get()
    return value


def release_burst(topo: Topology, svm_server: Any, count: int) -> dict[str, float]:
    """``count`` UDP answers of the PVM held (the SVM stopped: no copy to match), then
    one DO_CHECKPOINT; the time until the client received them all."""
    node = OwnNode(topo, hold_timeout_ms=600_000, max_held_packets=1 << 16,
                   max_held_bytes=256 << 20)
    svm_server.send_signal(signal.SIGSTOP)
    try:
        sock = ns_util.run_in(topo.client, lambda: socket.socket(socket.AF_INET,
                                                                 socket.SOCK_DGRAM))
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
            sock.settimeout(10.0)
            for i in range(0, count, 50):  # paced: the PVM's socket buffer is finite
                for _ in range(min(50, count - i)):
                    sock.sendto(b"b" * 64, (topo.vm_ip, npth.PORT_UDP))
                wait_for(lambda: node.dp().get("held-packets", 0), i + 50, 5.0)
            held = wait_for(lambda: node.dp().get("held-packets", 0), count, 10.0)
            got = [0]
            done = threading.Event()
            t_last = [0.0]

            def receive() -> None:
                try:
                    while got[0] < held:
                        sock.recv(256)
                        got[0] += 1
                        t_last[0] = time.perf_counter()
                except OSError:
                    pass
                done.set()

            rx = threading.Thread(target=receive)
            rx.start()
            t0 = time.perf_counter()
            node.client.do_checkpoint(node.index)
            t_call = time.perf_counter() - t0
            done.wait(30)
            rx.join(15)
            elapsed = (t_last[0] - t0) if got[0] else float("nan")
    finally:
        node.close()
        svm_server.send_signal(signal.SIGCONT)
    return {"held": float(held), "received": float(got[0]), "call ms": t_call * 1000,
            "release ms": elapsed * 1000, "frames/s": got[0] / elapsed if got[0] else 0.0}


# -- the frame feed (b vs d) ----------------------------------------------------
def feed_kernel(topo: Topology, pairs: list[tuple[bytes, bytes]], batch: int = 32,
                with_node: bool = True) -> tuple[int, float]:
    """The pairs onto the node's two devices (PVM frame from the PVM's side of to-pvm,
    SVM frame from shost's side of the forward link), interleaved in batches like
    bench/_common.py's drivers; (pairs matched, seconds until the last match).  Without
    the node: (pairs sent, seconds to send them), the feeder's own ceiling."""
    node = OwnNode(topo, hold_timeout_ms=600_000, max_held_packets=1 << 16,
                   max_connections=1 << 20) if with_node else None
    try:
        def raw(ifname: str) -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            s.setsockopt(socket.SOL_SOCKET, 32, 16 << 20)  # SO_SNDBUFFORCE
            s.bind((ifname, 0))
            return s
        p_sock = ns_util.run_in(topo.pvm, lambda: raw(topo.vm_if))
        s_sock = ns_util.run_in(topo.shost, lambda: raw(topo.shost_fwd_if))
        with p_sock, s_sock:
            base = node.dp().get("matched", 0) if node else 0
            t0 = time.perf_counter()
            for i in range(0, len(pairs), batch):
                chunk = pairs[i:i + batch]
                for p, _ in chunk:
                    p_sock.send(p)
                for _, s in chunk:
                    s_sock.send(s)
            matched = len(pairs) if node is None else wait_for(
                lambda: node.dp().get("matched", 0) - base, len(pairs), 60.0)
            elapsed = time.perf_counter() - t0
    finally:
        if node is not None:
            node.close()
    return matched, elapsed


def frame_feed(topo: Topology, count: int, with_kernel: bool, with_qemu: bool
               ) -> list[tuple[str, dict[str, dict[str, float]]]]:
    import _common

    rows = []
    for wl in _common.workloads(count):
        by_mode: dict[str, dict[str, float]] = {}
        try:
            if with_kernel:
                matched, elapsed = feed_kernel(topo, wl.pairs)
                by_mode["b"] = {"pairs/s": matched / elapsed, "matched": float(matched)}
                sent, elapsed = feed_kernel(topo, wl.pairs, with_node=False)
                by_mode["f"] = {"pairs/s": sent / elapsed, "matched": float("nan")}
            if with_qemu:
                res = _common.run_qemu(wl, _common.framed_batches(wl))
                by_mode["d"] = {"pairs/s": res.rate, "matched": float(res.released)}
        except Exception as exc:  # reported, the other figures still printed
            print(f"# frame feed {wl.name} failed: {exc!r}")
        rows.append((wl.name, by_mode))
    return rows


def short(name: str) -> str:
    """bench/_common.py's workload names in 16 columns: "TCP 1400 B, 1 flow" -> tcp-1400B-1f."""
    proto, size, _, flows = name.replace(",", "").split()[:4]
    return f"{proto.lower()}-{size}B-{flows}f"


# -- one run --------------------------------------------------------------------
def run_mode(mode: str, topo: Topology, workloads: list[tuple[str, Work]], tmp: Path,
             conns: int) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """The workloads in one mode, then (datapaths) the idle-connection state."""
    out: dict[str, dict[str, float]] = {}
    extra: dict[str, Any] = {}
    dp = None
    events = tmp / f"events-{mode}.jsonl"
    if mode == "plain":
        nft.apply(topo.phost_pvm_if, topo.phost_fwd_if, topo.phost)
    else:
        dp = npth.start_datapath(mode, topo, events)
    try:
        npth.udp_rr(topo, 20)  # warm-up: ARP, caches
        for name, work in workloads:
            print(f"  {mode}: {name}", flush=True)
            out[name] = work(topo)
        if dp is not None and conns:
            extra["mem"] = idle_state(mode, topo, dp.pid, events, conns)
    finally:
        if dp is None:
            nft.remove(topo.phost)
        else:
            npth.stop_datapath(dp)
    if dp is not None:
        extra["stats"] = npth.last_stats(events)
        extra["requests"] = sum(e["event"] == "checkpoint-request"
                                for e in npth.read_events(events))
    return out, extra


def idle_state(mode: str, topo: Topology, pid: int, events: Path, conns: int
               ) -> dict[str, float]:
    """Bytes per idle tracked connection: open ``conns`` UDP flows and divide the growth
    of the datapath's memory by the growth of its connection count."""
    def count() -> int:
        if mode == "kernel":
            return node_stats(topo).get("connections", 0)
        time.sleep(1.2)  # a fresh stats event (--stats-interval 0.5)
        return int(npth.last_stats(events).get("counters", {}).get("connections_now", 0))

    def memory() -> int:
        return slab_bytes() if mode == "kernel" else rss(pid)

    c0, m0, s0 = count(), memory(), meminfo("Slab")
    answered = npth.udp_open_flows(topo, conns)
    c1, m1, s1 = count(), memory(), meminfo("Slab")
    dc = max(1, c1 - c0)
    res = {"flows": float(conns), "answered": float(answered), "conns before": float(c0),
           "conns after": float(c1), "B/conn": (m1 - m0) / dc}
    if mode == "kernel":
        res["Slab B/conn"] = (s1 - s0) / dc
        conn = slab("colo_dp_conn")
        res["conn object"] = float(conn.get("object_size", 0))
        res["conn slab_size"] = float(conn.get("slab_size", 0))
        res["merged"] = float(bool(conn.get("merged")))
        res["held slab_size"] = float(slab("colo_cmp_held").get("slab_size", 0))
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="plain,kernel,nfqueue,qemu")
    parser.add_argument("--bulk-mb", type=float, default=4.0)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--flows", type=int, default=1000)
    parser.add_argument("--conns", type=int, default=5000,
                        help="UDP flows opened for the idle-state figure (0: none)")
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=3000,
                        help="frame pairs per workload of the b-vs-d feed")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"unknown modes {bad}: use {','.join(MODES)}")
    if not module_loaded():
        skipped = [m for m in modes if m in ("kernel",)]
        if skipped:
            print("# nf_colo not loaded: kernel mode and the kernel frame feed skipped "
                  "(scripts/bench-kernel.sh runs this in a guest kernel)")
        modes = [m for m in modes if m != "kernel"]
    kernel = "kernel" in modes
    workloads: list[tuple[str, Work]] = [
        ("tcp-bulk", lambda t: npth.tcp_bulk(t, int(args.bulk_mb * 1e6))),
        ("tcp-rr-64B", lambda t: npth.tcp_rr(t, args.requests, 64)),
        ("tcp-rr-1400B", lambda t: npth.tcp_rr(t, args.requests, 1400)),
        ("udp-rr-64B", lambda t: npth.udp_rr(t, args.requests)),
        (f"udp-{args.flows}flows", lambda t: npth.udp_rr(t, max(args.requests, args.flows),
                                                         64, args.flows)),
    ]
    results: dict[str, dict[str, dict[str, float]]] = {}
    extras: dict[str, dict[str, Any]] = {}
    burst: dict[str, float] = {}
    feed: list[tuple[str, dict[str, dict[str, float]]]] = []
    t_start = time.perf_counter()
    topo = build("colot-kb-" + secrets.token_hex(2))
    servers: list[Any] = []
    tmp = Path(tempfile.mkdtemp(prefix="colot-kb-"))
    try:
        servers = npth.start_servers(topo)
        for mode in ("plain", "kernel", "nfqueue"):
            if mode in modes:
                print(f"# mode {mode}", flush=True)
                results[mode], extras[mode] = run_mode(mode, topo, workloads, tmp,
                                                       args.conns)
        if kernel and args.burst:
            print("# release burst", flush=True)
            nft.apply(topo.phost_pvm_if, topo.phost_fwd_if, topo.phost)  # no SVM leak after
            try:
                burst = release_burst(topo, servers[1], args.burst)
            except Exception as exc:  # reported, the other figures still printed
                print(f"# release burst failed: {exc!r}")
            finally:
                nft.remove(topo.phost)
        if args.frames and (kernel or "qemu" in modes):
            print("# frame feed", flush=True)
            feed = frame_feed(topo, args.frames, kernel, "qemu" in modes)
    finally:
        npth.stop_servers(servers)
        topo.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, modes, results=results, extras=extras, burst=burst, feed=feed,
           wall=time.perf_counter() - t_start)


def report(args: argparse.Namespace, modes: list[str], *,
           results: dict[str, dict[str, dict[str, float]]], extras: dict[str, dict[str, Any]],
           burst: dict[str, float], feed: list[tuple[str, dict[str, dict[str, float]]]],
           wall: float) -> None:
    print(f"\n# bench/kernel.py  modes={','.join(modes)} bulk={args.bulk_mb} MB "
          f"requests={args.requests} flows={args.flows} conns={args.conns} "
          f"burst={args.burst} frames={args.frames}  ({wall:.0f} s, kernel "
          f"{os.uname().release}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f})")
    letters = [MODES[m] for m in ("plain", "kernel", "nfqueue") if m in results]
    ratios = [(n, "a") for n in ("b", "c") if n in letters and "a" in letters]
    names = list(next(iter(results.values())).keys()) if results else []
    rows = [(name, {MODES[m]: results[m][name] for m in results}) for name in names]
    if rows:
        npth.ratio_table("Namespace path: a=plain, b=kernel (nf_colo), c=nfqueue; ratios x/a "
                         "(throughput: higher is better; +ms: latency added over plain)",
                         letters, ratios, rows)
    for mode in ("kernel", "nfqueue"):
        ex = extras.get(mode)
        if not ex:
            continue
        c = ex.get("stats", {}).get("counters", {})
        print(f"\n{mode}: pairs_matched={c.get('pairs_matched')} "
              f"mismatches={c.get('mismatches')} checkpoint_requests={ex.get('requests')} "
              f"frames={c.get('frames')}")
        mem = ex.get("mem")
        if mem:
            print(f"{mode} idle state: " + "  ".join(f"{k}={v:.0f}" for k, v in mem.items()))
    if burst:
        print("\nrelease burst (kernel, one DO_CHECKPOINT): "
              + "  ".join(f"{k}={v:.1f}" for k, v in burst.items()))
    if feed:
        cols = [x for x in ("b", "f", "d") if any(x in r for _, r in feed)]
        ratios = [(n, d) for n, d in (("b", "d"), ("b", "f")) if n in cols and d in cols]
        npth.ratio_table("Same synthetic frame pairs: b=kernel node, d=QEMU colo-compare, "
                         "f=the AF_PACKET feeder alone (no node: its ceiling for b)",
                         cols, ratios, [(short(name), r) for name, r in feed])


if __name__ == "__main__":
    main()
