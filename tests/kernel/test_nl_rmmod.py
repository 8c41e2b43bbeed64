"""Unloading nf_colo while nodes exist is safe (docs/protocol.md): every node is
destroyed with node-gone(module-unload) in its namespace before the family goes away,
also while requests are in flight; the module loads again afterwards.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from colo_env import (
    insmod,
    module_back,
    module_loaded,
    module_refcnt,
    read_json,
    report,
    rmmod,
    spawn,
    stop,
    temp_netns,
)

from colo_proxy.nl import ColoClient, ColoEvents, ColoNetlinkError, GoneReason, Mode, NodeGoneEvent

pytestmark = pytest.mark.kernel


def test_rmmod_with_nodes(colo_ko: Path, request: pytest.FixtureRequest) -> None:
    insmod(colo_ko)
    with module_back(colo_ko), temp_netns() as ns, \
            ColoClient() as root, ColoClient(netns=ns) as inner, \
            ColoEvents(timeout=10.0) as root_events, ColoEvents(netns=ns, timeout=10.0) as events:
        mine = {root.proxy_init(Mode.PRIMARY).index for _ in range(3)}
        theirs = {inner.proxy_init(Mode.SECONDARY).index for _ in range(5)}
        assert module_refcnt() == 0, "sockets and nodes must not pin the module"

        res = rmmod()
        assert res.returncode == 0, f"rmmod with nodes failed: {res.stderr.strip()}"
        assert not module_loaded()

        got = events.collect(lambda e: len(e) >= len(theirs), timeout=10.0)
        assert {(e.index, e.reason) for e in got if isinstance(e, NodeGoneEvent)} == {
            (i, GoneReason.MODULE_UNLOAD) for i in theirs}
        got_root = [e for e in root_events.collect(lambda e: False, timeout=2.0)
                    if isinstance(e, NodeGoneEvent) and e.index in mine]
        assert {(e.index, e.reason) for e in got_root} == {
            (i, GoneReason.MODULE_UNLOAD) for i in mine}

        # the family is gone: old sockets get a plain error, no crash
        with pytest.raises(ColoNetlinkError) as exc:
            inner.dump()
        assert exc.value.errno == errno.ENOENT

        insmod(colo_ko)
        with ColoClient(netns=ns) as fresh:
            assert fresh.dump() == []
            assert fresh.proxy_init(Mode.PRIMARY, index=min(theirs)).index == min(theirs)
    report(request, f"rmmod with {len(mine) + len(theirs)} nodes in 2 namespaces: ok, "
                    f"node-gone(module-unload) {len(got_root) + len(theirs)}")


def test_rmmod_during_open_close_traffic(colo_ko: Path, request: pytest.FixtureRequest) -> None:
    insmod(colo_ko)
    procs = []
    with module_back(colo_ko), temp_netns() as ns:
        try:
            procs = [spawn(["stress", "20000", "300"], netns=ns) for _ in range(3)]
            # unload once every worker demonstrably has traffic flowing
            for proc in procs:
                assert read_json(proc, 300) == {"progress": 300}
            res = rmmod()
            assert res.returncode == 0, f"rmmod under traffic failed: {res.stderr.strip()}"
            results = [read_json(p, 900) for p in procs]
        finally:
            for proc in procs:
                stop(proc)
    outcomes: dict[str, int] = {}
    for r in results:
        for k, v in r["outcomes"].items():  # type: ignore[attr-defined]
            outcomes[k] = outcomes.get(k, 0) + v
        assert r["bad_owner"] == 0
    # before: created; during teardown: ESHUTDOWN; after: the family id is unknown
    assert set(outcomes) <= {"created", "ESHUTDOWN", "ENOENT"}, outcomes
    assert outcomes.get("created", 0) >= 900 and outcomes.get("ENOENT", 0) > 0, outcomes
    report(request, "rmmod under open/init/close traffic: ok; worker outcomes " +
           ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
