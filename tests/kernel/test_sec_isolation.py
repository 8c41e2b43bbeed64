"""SECCOLO isolation and node loss: no SVM frame reaches the client network.

The SVM (``v``) sends UDP datagrams and TCP SYNs to the client.  A capture on the client
network's port towards the secondary host (``n_s``) must see none of them: before the
node exists and after it is gone (the wiring: the SVM's tap is no bridge port and the
secondary host does not forward), and while it exists (the node sends every SVM frame
to the forward link, where the primary host's capture sees them).  The positive control:
after failover, with the tap in the bridge, the same frames do reach the client network,
so the capture would have seen them.

Node loss while the SVM is sending (destroy, ``ip link del`` of the tap or of the
forward device, rmmod): the command returns and the kernel logs no splat.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from colo_env import insmod, module_back, rmmod, wait_for
from sec_topo import CLIENT_IP, VM_MAC, Capture, SecTopo, in_netns, ip, sec_topology

from colo_proxy.nl import ColoClient, ColoEvents, GoneReason, Mode, NodeGoneEvent

pytestmark = pytest.mark.kernel

HANG = 120.0
MAC = bytes.fromhex(VM_MAC.replace(":", ""))


@pytest.fixture
def topo(colo_ko: Path) -> Iterator[SecTopo]:
    insmod(colo_ko)
    with sec_topology() as t:
        yield t


def svm_frames(cap: Capture) -> int:
    return sum(1 for f in cap.snapshot() if f[6:12] == MAC)


def svm_send(topo: SecTopo, tag: str, n: int = 5) -> None:
    """UDP datagrams and a TCP SYN from the SVM to the client."""
    with in_netns(topo.v):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        for i in range(n):
            u.sendto(f"{tag} {i}".encode(), (CLIENT_IP, 9))
        t.setblocking(False)
        t.connect_ex((CLIENT_IP, 9))
    finally:
        u.close()
        t.close()


def sent_and_settled(topo: SecTopo, at_tap: Capture, before: int, n: int) -> None:
    """The SVM's frames left it (seen on the secondary's end of its tap); then a short
    settle so anything that would be forwarded has been (an observation window, not a
    timing assert: the assertion is that nothing arrives)."""
    wait_for(lambda: svm_frames(at_tap) >= before + n, HANG, "the SVM's frames on its tap")
    time.sleep(1.0)


def test_no_svm_frame_reaches_the_client_network(topo: SecTopo) -> None:
    at_tap = Capture(topo.sh, "tap0").start()
    client_net = topo.capture_from_secondary()
    fwd = topo.capture_svm_output()
    try:
        # never created
        svm_send(topo, "no node")
        sent_and_settled(topo, at_tap, 0, 6)
        assert svm_frames(client_net) == 0
        with ColoClient(netns=topo.sh) as client:
            node = client.proxy_init(Mode.SECONDARY, tap_ifindex=topo.tap_ifindex(),
                                     fwd_ifindex=topo.fwd_ifindex())
            seen = svm_frames(at_tap)
            svm_send(topo, "node")
            sent_and_settled(topo, at_tap, seen, 6)
            wait_for(lambda: svm_frames(fwd) >= 6, HANG, "the SVM's frames on the forward link")
            assert svm_frames(client_net) == 0
            # even with the tap in the client bridge, until failover
            ip(topo.sh, "link", "set", "tap0", "master", "br0")
            seen = svm_frames(at_tap)
            svm_send(topo, "bridged")
            sent_and_settled(topo, at_tap, seen, 6)
            assert svm_frames(client_net) == 0
            ip(topo.sh, "link", "set", "tap0", "nomaster")
            got = client.get(node.index).sec_stats
            assert got["svm-frames"] >= 12, got
            client.proxy_destroy(node.index)
        # destroyed
        seen = svm_frames(at_tap)
        svm_send(topo, "destroyed")
        sent_and_settled(topo, at_tap, seen, 6)
        assert svm_frames(client_net) == 0
    finally:
        for c in (at_tap, client_net, fwd):
            c.stop()


def test_after_failover_svm_output_reaches_the_client_network(topo: SecTopo) -> None:
    """The positive control of the isolation test, and failover's wiring."""
    client_net = topo.capture_from_secondary()
    try:
        with ColoClient(netns=topo.sh) as client:
            node = client.proxy_init(Mode.SECONDARY, tap_ifindex=topo.tap_ifindex(),
                                     fwd_ifindex=topo.fwd_ifindex())
            client.do_failover(node.index)
            topo.svm_to_client_network()
            svm_send(topo, "failed over")
            wait_for(lambda: svm_frames(client_net) >= 6, HANG,
                     "the SVM's frames on the client network after failover")
            got = client.get(node.index).sec_stats
            assert got["flows"] == 0, got  # the SYN after failover opened no flow
    finally:
        client_net.stop()


def node_with_traffic(topo: SecTopo, client: ColoClient) -> int:
    node = client.proxy_init(Mode.SECONDARY, tap_ifindex=topo.tap_ifindex(),
                             fwd_ifindex=topo.fwd_ifindex())
    svm_send(topo, "busy", 50)
    wait_for(lambda: client.get(node.index).sec_stats["svm-frames"] >= 51, HANG,
             "the SVM's frames through the node")
    assert client.get(node.index).sec_stats["flows"] == 1  # the SVM's SYN
    return node.index


def gone(events: ColoEvents, index: int) -> NodeGoneEvent:
    while True:
        event = events.next(HANG)
        assert event is not None, f"no node-gone for node {index}"
        if isinstance(event, NodeGoneEvent) and event.index == index:
            return event


@pytest.mark.parametrize("dev", ["tap0", "fwd0"])
def test_link_del_while_active(topo: SecTopo, dev: str) -> None:
    with ColoClient(netns=topo.sh) as client, ColoEvents(netns=topo.sh) as events:
        index = node_with_traffic(topo, client)
        ip(topo.sh, "link", "del", dev)
        event = gone(events, index)
        assert event.reason == GoneReason.DEVICE_GONE
        assert event.sec_stats["svm-frames"] >= 51


def test_rmmod_while_active(topo: SecTopo, colo_ko: Path) -> None:
    with (module_back(colo_ko), ColoClient(netns=topo.sh) as client,
          ColoEvents(netns=topo.sh) as events):
        index = node_with_traffic(topo, client)
        res = rmmod()
        assert res.returncode == 0, res.stderr
        event = gone(events, index)
        assert event.reason == GoneReason.MODULE_UNLOAD
    # the module is back with no node: the SVM's frames stay isolated by the wiring alone
    client_net = topo.capture_from_secondary()
    at_tap = Capture(topo.sh, "tap0").start()
    try:
        svm_send(topo, "after rmmod")
        sent_and_settled(topo, at_tap, 0, 6)
        assert svm_frames(client_net) == 0
    finally:
        client_net.stop()
        at_tap.stop()
