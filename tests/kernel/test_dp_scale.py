"""The primary's datapath at scale: 64 nodes in one network namespace, each with its own
tap and forward link, do not see each other's frames, and a mismatch on some does not
touch the others.

The devices are veth pairs inside one namespace: a frame written to ``pN`` (the PVM's
side) arrives on the tap ``tN``, one written to ``qN`` (the SVM's side) on the forward
link ``fN``.  Frames are built once with scapy and their ports patched (UDP checksum 0,
which IPv4 allows; the IP checksum does not cover the ports).
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import time

import pytest
from colo_env import report
from dp_topo import in_netns
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from test_dp_udp import wait_node

from colo_proxy.nl import CheckpointNeededEvent, ColoClient, ColoEvents, Mode, Reason

pytestmark = pytest.mark.kernel

HOLD_MS = 600_000
NODES = 64


def batch(ns: str, lines: list[str]) -> None:
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n",
                   check=True, capture_output=True, text=True)


def make_pairs(ns: str, n: int) -> None:
    """tN/pN and fN/qN for N < n, all up; waits until every link is operstate UP (the
    carrier reaches the qdisc through linkwatch, up to a second later)."""
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
                   check=True)
    lines = []
    for i in range(n):
        lines += [f"link add t{i} type veth peer name p{i}",
                  f"link add f{i} type veth peer name q{i}"]
    lines += [f"link set {d}{i} up" for i in range(n) for d in "tpfq"]
    batch(ns, lines)
    deadline = time.monotonic() + 60
    while True:
        out = subprocess.run(["ip", "-j", "-n", ns, "link"], check=True, capture_output=True,
                             text=True).stdout
        down = [x["ifname"] for x in json.loads(out)
                if x["ifname"] != "lo" and x.get("operstate") != "UP"]
        if not down:
            return
        assert time.monotonic() < deadline, f"links not up after 60 s: {down[:8]}"
        time.sleep(0.2)


def ifindex(ns: str, dev: str) -> int:
    out = subprocess.run(["ip", "-j", "-n", ns, "link", "show", dev], check=True,
                         capture_output=True, text=True).stdout
    return int(json.loads(out)[0]["ifindex"])


def raw(ns: str, dev: str) -> socket.socket:
    with in_netns(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((dev, 0))
    return sock


def template(src_ip: str, payload: bytes) -> bytearray:
    frame = (Ether(src="52:54:00:00:00:02", dst="52:54:00:00:00:01")
             / IP(src=src_ip, dst="10.79.0.1", ttl=64) / UDP(sport=7000, dport=1, chksum=0)
             / payload)
    return bytearray(bytes(frame))


UDP_PORTS = 14 + 20  # offset of the UDP header in the template


def with_ports(frame: bytearray, sport: int, dport: int) -> bytes:
    struct.pack_into("!HH", frame, UDP_PORTS, sport, dport)
    return bytes(frame)


def test_64_nodes_in_one_netns_keep_to_their_own_devices(ns: str,
                                                        request: pytest.FixtureRequest) -> None:
    make_pairs(ns, NODES)
    pvm = [raw(ns, f"p{i}") for i in range(NODES)]
    svm = [raw(ns, f"q{i}") for i in range(NODES)]
    try:
        with ColoClient(netns=ns) as client, ColoEvents(netns=ns) as events:
            index = [client.proxy_init(Mode.PRIMARY, tap_ifindex=ifindex(ns, f"t{i}"),
                                       fwd_ifindex=ifindex(ns, f"f{i}"),
                                       hold_timeout_ms=HOLD_MS).index for i in range(NODES)]
            assert len(set(index)) == NODES
            for i in range(NODES):
                pvm[i].send(with_ports(template(f"10.78.{i}.2", b"reply %d" % i), 7000, 40000 + i))
            for i in range(NODES):
                wait_node(client, index[i], f"node {i} holds its frame",
                          lambda n: n.dp_stats["held-packets"] == 1)
            # the SVM agrees on even nodes and differs on odd ones
            for i in range(NODES):
                payload = b"reply %d" % i if i % 2 == 0 else b"other %d" % i
                svm[i].send(with_ports(template(f"10.78.{i}.2", payload), 7000, 40000 + i))
            asked: dict[int, CheckpointNeededEvent] = {}
            while len(asked) < NODES // 2 and (event := events.next(60)) is not None:
                if isinstance(event, CheckpointNeededEvent):
                    asked.setdefault(event.index, event)
            assert set(asked) == {index[i] for i in range(1, NODES, 2)}
            for i in range(1, NODES, 2):
                ev = asked[index[i]]
                assert ev.reason == Reason.PAYLOAD_MISMATCH
                assert ev.tuple is not None and ev.tuple.dport == 40000 + i, ev
                assert ev.tuple.src == socket.inet_aton(f"10.78.{i}.2")
                client.do_checkpoint(index[i])
            for i in range(NODES):
                got = wait_node(client, index[i], f"node {i} released its frame",
                                lambda n: n.dp_stats["released"] == 1)
                dp = got.dp_stats
                assert (dp["captured"], dp["svm-frames"], dp["held-packets"]) == (1, 1, 0), (i, dp)
                assert dp["matched"] == (1 if i % 2 == 0 else 0), (i, dp)
                assert got.stats["checkpoint-requests"] == i % 2, (i, got.stats)
            report(request, f"{NODES} nodes: {NODES // 2} matched, {NODES // 2} mismatched "
                            "and checkpointed, each on its own tap and forward link")
            for i in index:
                client.proxy_destroy(i)
    finally:
        for s in pvm + svm:
            s.close()
