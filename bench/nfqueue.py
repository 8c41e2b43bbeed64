#!/usr/bin/env python3
"""NFQUEUE datapath vs plain forwarding over the same namespace path, one run.

Both modes use one topology (colo_proxy.topology, workloads in bench/netpath.py).
"plain": phost only drops the SVM's output (the nft guard table) and forwards PVM
traffic; "nfqueue": ``colo-proxy run nfqueue`` holds every PVM packet until the
SVM's copy matched.  Workloads: TCP bulk (server -> client), TCP request/response
and UDP request/response; printed as ratio tables.  bench/kernel.py adds the kernel
datapath (and runs in a guest kernel).  Run as root:

    .venv/bin/python bench/nfqueue.py [--bulk-mb 20] [--requests 1000]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import netpath as npth

from colo_proxy.rules import nft
from colo_proxy.topology import Topology, build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bulk-mb", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    workloads: list[tuple[str, Callable[[Topology], dict[str, float]]]] = [
        ("tcp-bulk", lambda t: npth.tcp_bulk(t, int(args.bulk_mb * 1e6))),
        ("tcp-rr-64B", lambda t: npth.tcp_rr(t, args.requests)),
        ("udp-rr-64B", lambda t: npth.udp_rr(t, args.requests)),
    ]
    results: dict[str, dict[str, dict[str, float]]] = {"plain": {}, "nfqueue": {}}
    topo = build("colot-bench-" + secrets.token_hex(2))
    servers = []
    tmp = Path(tempfile.mkdtemp(prefix="colot-bench-"))
    try:
        servers = npth.start_servers(topo)
        # Warm-up (ARP, caches) then plain: SVM output dropped by the nft guard only.
        nft.apply(topo.phost_pvm_if, topo.phost_fwd_if, topo.phost)
        npth.udp_rr(topo, 20)
        for name, work in workloads:
            results["plain"][name] = work(topo)
        nft.remove(topo.phost)
        events = tmp / "events.jsonl"
        dp = npth.start_datapath("nfqueue", topo, events)
        try:
            npth.udp_rr(topo, 20)
            for name, work in workloads:
                results["nfqueue"][name] = work(topo)
        finally:
            npth.stop_datapath(dp)
        lines = npth.read_events(events)
        stats = [e for e in lines if e["event"] == "stats"][-1]
        requests = [e for e in lines if e["event"] == "checkpoint-request"]
    finally:
        npth.stop_servers(servers)
        topo.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"# bench/nfqueue.py  bulk={args.bulk_mb} MB  requests={args.requests}")
    npth.ratio_table("Throughput and latency, plain forwarding vs NFQUEUE datapath",
                     ["plain", "nfqueue"], [("nfqueue", "plain")],
                     [(name, {m: results[m][name] for m in results}) for name, _ in workloads])
    c = stats["counters"]
    print(f"\nengine: pairs_matched={c['pairs_matched']} bytes_compared={c['bytes_compared']} "
          f"checkpoint_requests={len(requests)} datapath={stats['datapath']}")


if __name__ == "__main__":
    main()
