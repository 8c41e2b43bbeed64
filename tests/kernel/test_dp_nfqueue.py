"""NFQUEUE keeps working for other users while the primary's datapath is attached.

The module registers no nf_queue handler, and its hooks live as long as the node, so a
real consumer (netfilterqueue) on another queue, in the very namespace of the node,
gets its packets and its verdicts take effect, while the datapath holds and releases
PVM frames next to it.
"""

from __future__ import annotations

import select
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from colo_env import insmod
from dp_topo import PVM_IP, PVM_PORT, Topo, in_netns, recv_or_none, topology
from test_dp_udp import HOLD_MS, request_reply, wait_node

from colo_proxy.nl import ColoClient, Mode

pytestmark = pytest.mark.kernel

QUEUE = 3
PORT = 9000
RULES = f"""
table inet colot_nfq {{
    chain input {{
        type filter hook input priority 0; policy accept;
        udp dport {PORT} queue num {QUEUE}
    }}
}}
"""


@pytest.fixture
def topo(colo_ko: Path) -> Iterator[Topo]:
    insmod(colo_ko)
    with topology(bridged=False) as t:
        yield t


def test_nfqueue_consumer_on_another_queue_is_unaffected(topo: Topo) -> None:
    from netfilterqueue import NetfilterQueue

    subprocess.run(["ip", "netns", "exec", topo.h, "nft", "-f", "-"], input=RULES, text=True,
                   check=True)
    seen: list[bytes] = []

    def verdict(pkt: Any) -> None:
        seen.append(bytes(pkt.get_payload()))
        pkt.accept()

    with in_netns(topo.h):
        nfq = NetfilterQueue()
        nfq.bind(QUEUE, verdict)
    nfq_sock = socket.fromfd(nfq.get_fd(), socket.AF_NETLINK, socket.SOCK_RAW)
    receiver = topo.udp(topo.h, "10.77.1.1", PORT)
    sender = topo.udp(topo.c, topo.client_ip, 0)
    try:
        with ColoClient(netns=topo.h) as client:
            node = client.proxy_init(Mode.PRIMARY, tap_ifindex=topo.tap_ifindex(),
                                     fwd_ifindex=topo.fwd_ifindex(), hold_timeout_ms=HOLD_MS)
            # the datapath holds a PVM reply meanwhile
            server = topo.udp(topo.p, PVM_IP, PVM_PORT)
            csock = topo.udp(topo.c, topo.client_ip, 0)
            request_reply(topo, csock, server, b"q", b"held")
            wait_node(client, node.index, "reply held",
                      lambda n: n.dp_stats["held-packets"] == 1)
            for i in range(5):
                sender.sendto(b"queued %d" % i, ("10.77.1.1", PORT))
            deadline = time.monotonic() + 60
            while len(seen) < 5 and time.monotonic() < deadline:
                if select.select([nfq_sock], [], [], 1.0)[0]:
                    nfq.run(block=False)
            assert len(seen) == 5
            got = [recv_or_none(receiver, 30) for _ in range(5)]
            assert got == [b"queued %d" % i for i in range(5)]
            # and the held reply is still there, released by a checkpoint
            assert client.get(node.index).dp_stats["held-packets"] == 1
            client.do_checkpoint(node.index)
            assert recv_or_none(csock, 30) == b"held"
            server.close()
            csock.close()
    finally:
        nfq_sock.close()
        nfq.unbind()
        receiver.close()
        sender.close()
