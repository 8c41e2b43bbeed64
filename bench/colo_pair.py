#!/usr/bin/env python3
"""colo-proxy vs QEMU's colo-compare in the guestless COLO pair (issue 8 §5).

Usage (root): .venv/bin/python bench/colo_pair.py [--quick] [--reps N] [--timeout-ms MS]

The topology is tests/qemu_harness/colo_ft.py: client, PVM and SVM namespaces with
real Linux TCP stacks, two ``-M none`` QEMUs with the COLO-FT filter set (the real
filter-rewriter on the secondary), and the comparison either in QEMU's
``-object colo-compare`` or in ``colo-proxy run qemu-socket``. The harness is the
VMM: it answers every DO_CHECKPOINT on notify_dev at once (both comparators then
flush) and counts them.

Each repetition starts one fresh topology per comparator, in alternating order
(colo-compare first in even repetitions, colo-proxy first in odd ones), and runs
the same workloads through it, in this order:

* **HTTP, new connections**: GETs of the demo's deterministic objects (600 B to
  120 KiB), one connection each; latency = connect to last body byte;
* **HTTP keep-alive**: the same objects, all requests on one connection;
* **TCP echo**: one long-lived connection, 64-byte request/reply round trips;
* **UDP bursts**: 64-byte datagrams to the echo service, in bursts sent back to
  back (200 in bursts of 50), each burst's replies collected before the next;
  each burst from a new source port; latency = send to reply, per datagram;
* **random-token page**: ``/session`` on new connections, a fresh token in each
  response: a real divergence per request, one checkpoint each expected.

After each workload the bench waits ``settle`` seconds (compare timeout plus
colo-compare's 1 s scan cycle plus margin), so that anything left held has timed
out and its checkpoint is counted in that workload. Checkpoints = DO_CHECKPOINT
messages the harness received during the workload and its settle time.

Match-to-release latency (how long colo-proxy held a primary frame before
releasing it) comes from colo-proxy's event stream: the difference of the
``latency_histogram`` of the last ``stats`` event before and after the workload
(docs/datapaths.md). Its p50/p99 are bucket upper bounds. colo-compare exposes no
such figure.
"""

from __future__ import annotations

import argparse
import http.client
import math
import os
import secrets
import shutil
import signal
import socket
import statistics
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_line, machine_line, percentile, print_table
from qemu_harness.colo_ft import (
    ECHO_TCP_PORT,
    ECHO_UDP_PORT,
    ColoFtSpec,
    GuestlessColo,
    echo_service,
)

from colo_proxy.demo.content import SESSION_PATH, TOKEN_RE, expected_body, session_body
from colo_proxy.seam.latency import LATENCY_BUCKETS_MS

SIDES = ("colo-compare", "colo-proxy")
PATHS = ["/", "/static/small.txt", "/static/page.html", "/static/image.bin",
         "/static/bundle.js"]
SOCKET_TIMEOUT = 10.0
ECHO_BYTES = 64
STATS_INTERVAL = "0.2"
STOPPING = threading.Event()
"""Set on Ctrl-C/SIGTERM: client loops (in their own threads) stop at once."""


@dataclass(frozen=True)
class Sizes:
    http_new: int = 20
    keepalive: int = 50
    echo: int = 100
    udp: int = 200
    udp_burst: int = 50
    tokens: int = 10


QUICK = Sizes(http_new=5, keepalive=5, echo=10, udp=20, udp_burst=10, tokens=2)


@dataclass
class ClientRun:
    """What the client saw: one latency per completed request, and the failures."""

    latencies_ms: list[float] = field(default_factory=list)
    failed: int = 0


@dataclass
class WorkloadRun:
    client: ClientRun
    checkpoints: int
    hist: list[int] | None = None
    """colo-proxy: match-to-release histogram counts of this workload."""
    hist_sum_ms: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)
    """colo-proxy: checkpoint-request events by reason."""


# -- client workloads (run inside the client namespace) ----------------------------------

def http_new(server: str, count: int) -> ClientRun:
    run = ClientRun()
    for i in range(count):
        if STOPPING.is_set():
            break
        path = PATHS[i % len(PATHS)]
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection(server, 80, timeout=SOCKET_TIMEOUT)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            response = conn.getresponse()
            body = response.read()
            ok = response.status == 200 and body == expected_body(path)
        except OSError:
            ok = False
        finally:
            conn.close()
        _record(run, ok, t0)
    return run


def http_keepalive(server: str, count: int) -> ClientRun:
    run = ClientRun()
    conn = http.client.HTTPConnection(server, 80, timeout=SOCKET_TIMEOUT)
    try:
        conn.connect()
        for i in range(count):
            if STOPPING.is_set():
                break
            path = PATHS[i % len(PATHS)]
            t0 = time.perf_counter()
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
                ok = response.status == 200 and body == expected_body(path)
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()  # http.client reconnects on the next request
            _record(run, ok, t0)
    finally:
        conn.close()
    return run


def tcp_echo(server: str, count: int) -> ClientRun:
    run = ClientRun()
    with socket.create_connection((server, ECHO_TCP_PORT), timeout=SOCKET_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(count):
            if STOPPING.is_set():
                break
            message = struct.pack(">I", i) + bytes((i + j) & 0xFF for j in range(ECHO_BYTES - 4))
            t0 = time.perf_counter()
            try:
                sock.sendall(message)
                got = b""
                while len(got) < len(message):
                    chunk = sock.recv(len(message) - len(got))
                    if not chunk:
                        break
                    got += chunk
                ok = got == message
            except OSError:
                ok = False
            _record(run, ok, t0)
            if not ok:
                run.failed += count - i - 1
                break
    return run


def udp_bursts(server: str, count: int, burst: int, wait_s: float) -> ClientRun:
    """``count`` datagrams in bursts of ``burst``; each burst's replies are awaited
    (up to ``wait_s``) before the next one is sent."""
    run = ClientRun()
    for first in range(0, count, burst):
        if STOPPING.is_set():
            break
        one = udp_burst(server, range(first, min(count, first + burst)), wait_s)
        run.latencies_ms += one.latencies_ms
        run.failed += one.failed
    return run


def udp_burst(server: str, seqs: range, wait_s: float) -> ClientRun:
    run = ClientRun()
    sent: dict[int, float] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.connect((server, ECHO_UDP_PORT))
        for i in seqs:
            sent[i] = time.perf_counter()
            sock.send(struct.pack(">I", i) + bytes(ECHO_BYTES - 4))
        deadline = time.perf_counter() + wait_s
        while sent and (left := deadline - time.perf_counter()) > 0 and not STOPPING.is_set():
            sock.settimeout(min(left, 0.5))
            try:
                data = sock.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                break
            now = time.perf_counter()
            if len(data) == ECHO_BYTES:
                t0 = sent.pop(struct.unpack_from(">I", data)[0], None)
                if t0 is not None:
                    run.latencies_ms.append((now - t0) * 1000.0)
    run.failed = len(sent)
    return run


def token_pages(server: str, count: int) -> ClientRun:
    run = ClientRun()
    for _ in range(count):
        if STOPPING.is_set():
            break
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection(server, 80, timeout=SOCKET_TIMEOUT)
        try:
            conn.request("GET", SESSION_PATH, headers={"Connection": "close"})
            response = conn.getresponse()
            body = response.read()
            match = TOKEN_RE.search(body)
            ok = (response.status == 200 and match is not None
                  and body == session_body(match.group(1).decode()))
        except OSError:
            ok = False
        finally:
            conn.close()
        _record(run, ok, t0)
    return run


def _record(run: ClientRun, ok: bool, t0: float) -> None:
    if ok:
        run.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
    else:
        run.failed += 1


@dataclass(frozen=True)
class Workload:
    name: str
    requests: Callable[[Sizes], int]
    run: Callable[[str, int], ClientRun]


def workloads(udp_wait_s: float, sizes: Sizes) -> list[Workload]:
    return [
        Workload("HTTP, new connections", lambda s: s.http_new, http_new),
        Workload("HTTP keep-alive", lambda s: s.keepalive, http_keepalive),
        Workload("TCP echo, 1 connection", lambda s: s.echo, tcp_echo),
        Workload("UDP bursts", lambda s: s.udp,
                 lambda server, n: udp_bursts(server, n, sizes.udp_burst, udp_wait_s)),
        Workload("random-token page", lambda s: s.tokens, token_pages),
    ]


def _bound(func: Callable[[str, int], ClientRun], server: str,
           count: int) -> Callable[[], ClientRun]:
    return lambda: func(server, count)


# -- one topology -------------------------------------------------------------------------

def _last_histogram(events: list[dict[str, Any]]) -> tuple[list[int], float]:
    for event in reversed(events):
        if event.get("event") == "stats" and isinstance(event.get("latency_histogram"), dict):
            hist = event["latency_histogram"]
            return [int(c) for c in hist["counts"]], float(hist["sum_ms"])
    return [0] * (len(LATENCY_BUCKETS_MS) + 1), 0.0


def run_side(side: str, args: argparse.Namespace, sizes: Sizes, rep: int) -> list[WorkloadRun]:
    spec = ColoFtSpec(compare=side, compare_timeout_ms=args.timeout_ms,
                      extra_services=(echo_service(),), events=side == "colo-proxy",
                      proxy_args=("--stats-interval", STATS_INTERVAL))
    prefix = "cp" + secrets.token_hex(3)
    print(f"rep {rep + 1}: {side}: starting topology {prefix}", flush=True)
    results: list[WorkloadRun] = []
    _run_workloads(GuestlessColo(prefix, spec), args, sizes, results)
    return results


def _run_workloads(topo: GuestlessColo, args: argparse.Namespace, sizes: Sizes,
                   results: list[WorkloadRun]) -> None:
    side, spec = topo.spec.compare, topo.spec
    with topo:
        server = spec.server_ip
        seen_events = 0
        hist0, sum0 = _last_histogram(topo.proxy_events())
        for wl in workloads(args.udp_wait, sizes):
            count = wl.requests(sizes)
            before = topo.checkpoints
            client = topo.client(_bound(wl.run, server, count))
            time.sleep(args.settle)
            run = WorkloadRun(client, topo.checkpoints - before)
            if side == "colo-proxy":
                events = topo.proxy_events()
                hist1, sum1 = _last_histogram(events)
                run.hist = [b - a for a, b in zip(hist0, hist1, strict=True)]
                run.hist_sum_ms = sum1 - sum0
                hist0, sum0 = hist1, sum1
                run.reasons = Counter(str(e.get("reason")) for e in events[seen_events:]
                                      if e.get("event") == "checkpoint-request")
                seen_events = len(events)
            results.append(run)
            print(f"  {wl.name}: {len(client.latencies_ms)}/{count} ok, "
                  f"{run.checkpoints} checkpoints, client p50 "
                  f"{percentile(client.latencies_ms, 0.5):.2f} ms", flush=True)
        if args.keep_logs and side == "colo-proxy":
            _keep_logs(topo)


def _keep_logs(topo: GuestlessColo) -> None:
    """Copy colo-proxy's log and event stream out of the topology's directory
    (``stop`` removes it)."""
    for src in (topo.proxy_log, topo.events_path):
        if src.exists():
            dst = Path("/tmp") / f"{topo.prefix}-{src.name}"
            shutil.copyfile(src, dst)
            print(f"  kept {dst}")


# -- tables --------------------------------------------------------------------------------

def _median_span(values: list[float], fmt: str) -> str:
    if not values or any(math.isnan(v) for v in values):
        return "n/a"
    med = format(statistics.median(values), fmt)
    if len(values) == 1:
        return med
    return f"{med} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def _ratio(ours: list[float], theirs: list[float]) -> str:
    if not ours or not theirs:
        return "n/a"
    a, b = statistics.median(ours), statistics.median(theirs)
    if math.isnan(a) or math.isnan(b) or b <= 0:
        return "n/a"
    return f"{a / b:.2f}x"


def _hist_percentile(counts: list[int], p: float) -> str:
    total = sum(counts)
    if not total:
        return "n/a"
    rank = max(1, math.ceil(p * total))
    running = 0
    for i, c in enumerate(counts):
        running += c
        if running >= rank:
            return f"<={LATENCY_BUCKETS_MS[i]:g}" if i < len(LATENCY_BUCKETS_MS) else ">10000"
    return "n/a"


def report(names: list[str], requests: list[int], runs: dict[str, list[list[WorkloadRun]]],
           reps: int) -> list[str]:
    """Print the tables; return the goal verdict lines."""
    ck_rows, lat_rows, rel_rows = [], [], []
    verdicts = []
    for w, name in enumerate(names):
        per = {side: [rep[w] for rep in runs[side]] for side in SIDES}
        ck = {side: [float(r.checkpoints) for r in per[side]] for side in SIDES}
        failed = {side: sum(r.client.failed for r in per[side]) for side in SIDES}
        reasons: Counter[str] = Counter()
        for r in per["colo-proxy"]:
            reasons.update(r.reasons)
        ck_rows.append([name, str(requests[w]), _median_span(ck["colo-compare"], ".0f"),
                        _median_span(ck["colo-proxy"], ".0f"),
                        ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "-",
                        f"{failed['colo-compare']} / {failed['colo-proxy']}"])
        p50 = {side: [percentile(r.client.latencies_ms, 0.5) for r in per[side]] for side in SIDES}
        p99 = {side: [percentile(r.client.latencies_ms, 0.99) for r in per[side]]
               for side in SIDES}
        lat_rows.append([name, _median_span(p50["colo-compare"], ".2f"),
                         _median_span(p50["colo-proxy"], ".2f"),
                         _ratio(p50["colo-proxy"], p50["colo-compare"]),
                         _median_span(p99["colo-compare"], ".2f"),
                         _median_span(p99["colo-proxy"], ".2f"),
                         _ratio(p99["colo-proxy"], p99["colo-compare"])])
        hist = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        hsum = 0.0
        for r in per["colo-proxy"]:
            for i, c in enumerate(r.hist or []):
                hist[i] += c
            hsum += r.hist_sum_ms
        count = sum(hist)
        rel_rows.append([name, str(count), _hist_percentile(hist, 0.5),
                         _hist_percentile(hist, 0.99),
                         f"{hsum / count:.3f}" if count else "n/a", "not observable"])
        med_c, med_p = statistics.median(ck["colo-compare"]), statistics.median(ck["colo-proxy"])
        more = [i for i, (a, b) in enumerate(zip(ck["colo-compare"], ck["colo-proxy"],
                                                 strict=True)) if b > a]
        verdicts.append(f"{name}: checkpoints colo-proxy {med_p:g} vs colo-compare {med_c:g} "
                        f"(median); colo-proxy more in {len(more)} of {reps} reps")
        if p50["colo-compare"] and p50["colo-proxy"]:
            p50_ratio = _ratio(p50["colo-proxy"], p50["colo-compare"])
            verdicts.append(f"{name}: client p50 ratio {p50_ratio} (goal <= 1.20x)")
    print_table(f"Checkpoints per workload (median (min-max) over {reps} reps)",
                ["workload", "requests/rep", "colo-compare", "colo-proxy",
                 "colo-proxy request reasons (all reps)", "failed requests (compare / proxy)"],
                ck_rows)
    print_table("Client request latency, ms (per-rep percentile; median (min-max) over reps)",
                ["workload", "colo-compare p50", "colo-proxy p50", "p50 ratio proxy/compare",
                 "colo-compare p99", "colo-proxy p99", "p99 ratio proxy/compare"], lat_rows)
    print_table("Match-to-release latency, ms (colo-proxy event stream, all reps pooled)",
                ["workload", "colo-proxy releases", "p50 (bucket bound)", "p99 (bucket bound)",
                 "mean", "colo-compare"], rel_rows)
    return verdicts


# -- main ----------------------------------------------------------------------------------

def _requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, taps)"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not installed"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    return None


MAIN_PID = os.getpid()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != MAIN_PID:
        # A forked helper (pyroute2 forks one per namespaced netlink socket) inherits
        # this handler: it must die as told, not unwind a copy of the bench, whose
        # cleanup would remove the parent's namespaces.
        os._exit(128 + signum)
    STOPPING.set()
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="1 rep, few requests per workload (smoke test)")
    parser.add_argument("--timeout-ms", type=int, default=1000,
                        help="compare timeout of both comparators (default 1000)")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds to wait after each workload (default: timeout + 1.5 s)")
    parser.add_argument("--udp-wait", type=float, default=None,
                        help="seconds to wait for UDP replies after the burst "
                             "(default: timeout + 1.5 s)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="copy colo-proxy's log and event stream to /tmp/PREFIX-colo-proxy*")
    args = parser.parse_args()
    if args.reps < 1 or args.timeout_ms < 1:
        parser.error("--reps and --timeout-ms must be positive")
    reason = _requirements()
    if reason:
        print(f"colo_pair: {reason}", file=sys.stderr)
        return 1
    if args.quick:
        args.reps = 1
    sizes = QUICK if args.quick else Sizes()
    default_wait = args.timeout_ms / 1000.0 + 1.5
    args.settle = default_wait if args.settle is None else args.settle
    args.udp_wait = default_wait if args.udp_wait is None else args.udp_wait
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)

    wls = workloads(args.udp_wait, sizes)
    print(f"# colo-compare vs colo-proxy, guestless COLO pair\n\n{machine_line()}")
    print(f"start: {time.strftime('%Y-%m-%d %H:%M:%S')}, {load_line()}")
    print(f"reps {args.reps}, compare timeout {args.timeout_ms} ms, settle {args.settle:g} s; "
          "requests per workload: " + ", ".join(f"{w.name} {w.requests(sizes)}" for w in wls)
          + f" (UDP in bursts of {sizes.udp_burst})",
          flush=True)
    runs: dict[str, list[list[WorkloadRun]]] = {side: [] for side in SIDES}
    try:
        for rep in range(args.reps):
            order = SIDES if rep % 2 == 0 else tuple(reversed(SIDES))
            for side in order:
                runs[side].append(run_side(side, args, sizes, rep))
    except KeyboardInterrupt:
        STOPPING.set()
        print("colo_pair: interrupted (topology cleaned up)", file=sys.stderr)
        return 130
    end_load = load_line()
    verdicts = report([w.name for w in wls], [w.requests(sizes) for w in wls], runs, args.reps)
    print(f"\nend: {time.strftime('%Y-%m-%d %H:%M:%S')}, {end_load}")
    print("\n### Goals\n")
    for line in verdicts:
        print(f"- {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
