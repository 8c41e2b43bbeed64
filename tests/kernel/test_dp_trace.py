"""The module's tracepoints (system nf_colo, kmod/nfnetlink_colo/colo_trace.h) say what
the datapath did, packet by packet, where a printk may not: a UDP reply that the SVM
answered differently (capture, mismatch with tuple and offset, the checkpoint request,
a suppressed one, checkpoint done), then one it answered alike (match, release).  The
trace's figures are checked against the netlink event and the node's counters."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from colo_env import insmod
from dp_topo import PVM_IP, PVM_PORT, Topo, recv_or_none, topology
from test_dp_udp import HOLD_MS, diverged_reply, request_reply, wait_node

from colo_proxy.nl import ColoClient, ColoEvents, Mode, Reason

pytestmark = pytest.mark.kernel

TRACING = Path("/sys/kernel/tracing")
EVENTS = TRACING / "events" / "nf_colo"
NAMES = {"nf_colo_capture", "nf_colo_match", "nf_colo_release", "nf_colo_mismatch",
         "nf_colo_checkpoint_request", "nf_colo_checkpoint_done"}
LINE = re.compile(r"\s(nf_colo_\w+): (.*)$")


@pytest.fixture
def trace(colo_ko: Path) -> Iterator[None]:
    insmod(colo_ko)
    assert {p.name for p in EVENTS.iterdir() if p.is_dir()} == NAMES
    (TRACING / "trace").write_text("")
    (EVENTS / "enable").write_text("1")
    try:
        yield
    finally:
        (EVENTS / "enable").write_text("0")
        (TRACING / "trace").write_text("")


@pytest.fixture
def topo(trace: None) -> Iterator[Topo]:
    with topology(bridged=True) as t:
        yield t


def records() -> list[tuple[str, dict[str, str]]]:
    """The nf_colo events in the trace buffer, in order: (name, fields)."""
    got = []
    for line in (TRACING / "trace").read_text().splitlines():
        m = LINE.search(line)
        if m and m.group(1) in NAMES:
            got.append((m.group(1), dict(f.split("=", 1) for f in m.group(2).split())))
    return got


def named(recs: list[tuple[str, dict[str, str]]], name: str) -> list[dict[str, str]]:
    return [f for n, f in recs if n == name]


def test_tracepoints_tell_what_the_datapath_did(topo: Topo) -> None:
    with ColoClient(netns=topo.h) as client, ColoEvents(netns=topo.h) as events:
        node = client.proxy_init(Mode.PRIMARY, tap_ifindex=topo.tap_ifindex(),
                                 fwd_ifindex=topo.fwd_ifindex(), hold_timeout_ms=HOLD_MS)
        idx = str(node.index)
        server = topo.udp(topo.p, PVM_IP, PVM_PORT)
        csock = topo.udp(topo.c, topo.client_ip, 0)
        svm = topo.svm_socket()
        try:
            cport, event = diverged_reply(topo, client, index=node.index, csock=csock,
                                          server=server, svm=svm, events=events)
            assert event.reason == Reason.PAYLOAD_MISMATCH and event.offset is not None
            client.request_checkpoint(node.index, Reason.MANUAL)  # pending: suppressed
            client.do_checkpoint(node.index)
            assert recv_or_none(csock, 30) == b"token=PVM-1234"
            cport2 = request_reply(topo, csock, server, b"again", b"same")
            wait_node(client, node.index, "reply held", lambda n: n.dp_stats["held-packets"] == 1)
            svm.send(topo.svm_udp(PVM_PORT, topo.client_ip, cport2, b"same"))
            assert recv_or_none(csock, 30) == b"same"
            got = client.get(node.index)
        finally:
            for s in (server, csock, svm):
                s.close()

    recs = records()
    assert {n for n, _ in recs} == NAMES, recs
    assert all(f["node"] == idx for _, f in recs), recs
    captures = named(recs, "nf_colo_capture")
    assert len(captures) == got.dp_stats["captured"]
    assert sum(f["class"] == "fifo" for f in captures) >= 2  # the two replies
    assert any(f["class"] == "control" for f in captures)  # the PVM's ARP

    [mismatch] = named(recs, "nf_colo_mismatch")
    assert mismatch["proto"] == str(socket.IPPROTO_UDP)
    assert (mismatch["src"], mismatch["dst"]) == (f"::ffff:{PVM_IP}", f"::ffff:{topo.client_ip}")
    assert (mismatch["sport"], mismatch["dport"]) == (str(PVM_PORT), str(cport))
    assert mismatch["offset"] == str(event.offset)

    requests = named(recs, "nf_colo_checkpoint_request")
    assert [(r["reason"], r["result"]) for r in requests] == [
        ("payload-mismatch", "sent"), ("manual", "suppressed")]
    [done] = named(recs, "nf_colo_checkpoint_done")
    assert done["released"] == "1"

    [match] = named(recs, "nf_colo_match")
    assert (match["sport"], match["dport"]) == (str(PVM_PORT), str(cport2))
    assert int(match["len"]) >= 8 + len(b"same")
    releases = named(recs, "nf_colo_release")
    assert len(releases) == 2
    assert all(int(r["held_us"]) >= 0 for r in releases)
    # the order tells the story: mismatch, request, checkpoint with its release, the match
    order = [n for n, _ in recs if n != "nf_colo_capture"]
    assert order[:5] == ["nf_colo_mismatch", "nf_colo_checkpoint_request",
                         "nf_colo_checkpoint_request", "nf_colo_release",
                         "nf_colo_checkpoint_done"], order
    assert sorted(order[5:]) == ["nf_colo_match", "nf_colo_release"], order
