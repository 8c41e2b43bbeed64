"""The NFQUEUE datapath with the real engine, real packets, real netfilter."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nfqueue_support import (
    Datapath,
    pattern,
    queue_proc,
    servers,
    tcp_request,
    topology,
    udp_exchange,
)

from colo_proxy.rules import iptables, nft
from colo_proxy.topology import Topology

pytestmark = pytest.mark.root


def test_identical_responses_are_released_once(tmp_path: Path) -> None:
    with topology() as topo, servers(topo), Datapath(topo, tmp_path) as dp:
        msgs = [f"req-{i}".encode() for i in range(20)]
        replies = udp_exchange(topo, msgs, wait=1.0, expect=len(msgs))
        # Exactly one reply per request: the PVM's, released; the SVM's consumed.
        assert sorted(replies) == sorted(b"echo:" + m for m in msgs)
        assert tcp_request(topo, b"200000", 200000) == pattern(200000)
        stats = dp.stats_when(lambda s: s["counters"]["pairs_matched"] >= 20
                              and s["counters"]["bytes_compared"] >= 200000
                              and s["datapath"]["dropped_secondary"] >= 20)
        dp.stop()
        assert dp.named("checkpoint-request") == []
        counters = stats["counters"]
        assert counters["pairs_matched"] >= 20
        assert counters["bytes_compared"] >= 200000
        assert stats["datapath"]["dropped_secondary"] >= 20
        final = dp.events()[-1]
        assert final["event"] == "exit" and final["reason"] == "signal SIGTERM"
        # Every PVM packet read was released and accepted; the figures are final.
        assert final["released"] == final["delivered"] == final["frames"]["primary"]
        assert final["lost"] == 0


def test_divergent_response_is_held_checkpointed_then_released(tmp_path: Path) -> None:
    with topology() as topo, servers(topo), Datapath(topo, tmp_path) as dp:
        replies = udp_exchange(topo, [b"diverge"], wait=1.0, expect=1)
        assert replies == [b"answer from pvm"]
        request = dp.wait_for("checkpoint-request")[0]
        assert request["reason"] == "payload-mismatch"
        key = request["key"]
        assert (key["proto"], key["src"], key["dst"]) == ("udp", "198.18.2.2", "198.18.1.2")
        assert "udp" in key["text"]
        assert request["policy"] == "flush" and "no VM state" in request["note"]
        div = request["divergence"]
        assert bytes.fromhex(div["primary"]).startswith(b"pvm")  # from the first difference
        assert bytes.fromhex(div["secondary"]).startswith(b"svm")
        done = dp.wait_for("checkpoint-done")[0]
        assert done["released"] >= 1
        assert done["t"] >= request["t"]
        # After the flush identical traffic flows again without a new request.
        assert udp_exchange(topo, [b"after"], wait=0.5, expect=1) == [b"echo:after"]
        assert len(dp.named("checkpoint-request")) == 1


def test_checkpoint_command_gates_the_flush(tmp_path: Path) -> None:
    flag = tmp_path / "allow"
    cmd = f"echo $COLO_REASON >> {tmp_path / 'log'}; test -e {flag}"
    with (topology() as topo, servers(topo),
          Datapath(topo, tmp_path, "--checkpoint-cmd", cmd) as dp):
        # The command fails: nothing is released, it is retried.
        assert udp_exchange(topo, [b"diverge"], wait=1.5) == []
        assert dp.wait_for("checkpoint-failed")[0]["rc"] == 1
        flag.touch()
        dp.wait_for("checkpoint-done", timeout=10)
        assert "payload-mismatch" in (tmp_path / "log").read_text()


def _queue_when(topo: Topology, settled: Callable[[dict[str, int]], bool],
                timeout: float = 20.0) -> dict[str, int]:
    """phost's queue 0, once ``settled`` holds for it or after ``timeout`` seconds
    (the PVM answers the last requests late on a loaded machine)."""
    deadline = time.monotonic() + timeout
    queue = queue_proc(topo)[0]
    while not settled(queue) and time.monotonic() < deadline:
        time.sleep(0.05)
        queue = queue_proc(topo)[0]
    return queue


@pytest.mark.parametrize("fail_closed", [True, False], ids=["fail-closed", "fail-open"])
def test_queue_maxlen_bounds_the_kernel_queue(tmp_path: Path, fail_closed: bool) -> None:
    extra = ["--queue-maxlen", "4", "--compare-timeout", "60000"]
    if fail_closed:
        extra.append("--fail-closed")
    # No SVM service: every PVM reply stays held (no partner, long timeout).
    with topology() as topo, servers(topo, svm=False), Datapath(topo, tmp_path, *extra) as dp:
        replies = udp_exchange(topo, [f"m{i}".encode() for i in range(10)], wait=1.0,
                               expect=None if fail_closed else 6)
        queues = _queue_when(topo, lambda q: q["total"] + q["dropped"] + len(replies) >= 10)
        assert queues["total"] == 4  # held as pending verdicts
        if fail_closed:
            assert replies == []
            assert queues["dropped"] == 6
        else:
            assert len(replies) == 6  # overflow accepted uncompared (fail-open)
            assert queues["dropped"] == 0
        stats = dp.stats_when(lambda s: s["counters"]["frames"]["primary"] >= 4)
        assert stats["counters"]["frames"]["primary"] == 4


@pytest.mark.parametrize(("rules", "backend"),
                         [("iptables", "nft"), ("iptables", "legacy"), ("nft", "nft")])
def test_rules_removed_on_exit(tmp_path: Path, rules: str, backend: str) -> None:
    with topology() as topo, servers(topo):
        dp = Datapath(topo, tmp_path, "--rules", rules, "--iptables-backend", backend).start()
        try:
            assert udp_exchange(topo, [b"x"], wait=0.5, expect=1) == [b"echo:x"]
            assert "COLO_PVM" in iptables.save(backend, "ipv4", topo.phost)
            assert nft.exists(topo.phost) == (rules == "nft")
        finally:
            assert dp.stop() == 0
        for family in iptables.FAMILIES:
            assert "COLO_" not in iptables.save(backend, family, topo.phost)
        assert not nft.exists(topo.phost)
        assert dp.events()[-1]["event"] == "exit"
