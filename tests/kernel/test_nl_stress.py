"""Open/close stress: 10,000 x (open socket -> PROXY_INIT -> close) from 4 processes.

Every close must destroy the node (NETLINK_URELEASE) and every listener must see
node-gone(owner-released) for each, with no leaked node, a module that unloads and
no kernel warning (the conftest fails the test on any BUG/WARNING/stall line).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from colo_env import insmod, module_back, read_json, report, rmmod, spawn, stop, temp_netns

from colo_proxy.nl import ColoClient

pytestmark = pytest.mark.kernel

CYCLES = 10_000
WORKERS = 4
LISTENERS = 2


def test_open_close_stress(colo_ko: Path, request: pytest.FixtureRequest) -> None:
    insmod(colo_ko)
    per_worker = CYCLES // WORKERS
    procs = []
    with module_back(colo_ko), temp_netns() as ns:
        try:
            listeners = [spawn(["listen", str(CYCLES), "300"], netns=ns)
                         for _ in range(LISTENERS)]
            procs += listeners
            for lst in listeners:
                assert read_json(lst, 180) == {"ready": True}
            t0 = time.monotonic()
            workers = [spawn(["stress", str(per_worker)], netns=ns) for _ in range(WORKERS)]
            procs += workers
            results = [read_json(w, 900) for w in workers]
            elapsed = time.monotonic() - t0
            heard = [read_json(lst, 300) for lst in listeners]
        finally:
            for proc in procs:
                stop(proc)

        created = sum(r["outcomes"].get("created", 0) for r in results)  # type: ignore[attr-defined]
        for r in results:
            assert r["outcomes"] == {"created": per_worker}, r
            assert r["bad_owner"] == 0, r
        for h in heard:
            assert h["error"] is None, h
            assert h["node_gone"] == {"owner-released": created}, h
            assert h["checkpoint_requests"] == 0, h

        with ColoClient(netns=ns) as client:
            leaked = client.dump()
        assert leaked == [], f"{len(leaked)} nodes leaked"

        res = rmmod()
        assert res.returncode == 0, f"rmmod after the stress failed: {res.stderr.strip()}"

    slowest = max(float(r["seconds"]) for r in results)  # type: ignore[arg-type]
    worker_s = ", ".join(f"{r['seconds']}s" for r in results)
    report(request, f"{created} open/init/close cycles by {WORKERS} processes: cycle loops "
                    f"{worker_s} ({created / slowest:.0f} cycles/s aggregate); "
                    f"{elapsed:.1f}s wall including process start-up")
    report(request, "listeners: " + "; ".join(
        f"node-gone owner-released {h['node_gone'].get('owner-released', 0)}"  # type: ignore[attr-defined]
        for h in heard) + f" (expected {created} each); leaked nodes 0; rmmod ok")
