"""The primary's datapath with UDP, bridged and routed: hold, compare, release, checkpoint.

The PVM (namespace ``p``) answers a client's UDP request; its reply is held on the tap
until the SVM's copy arrives on the forward link.  The same bytes release it with no
checkpoint request; different bytes raise checkpoint-needed (payload-mismatch, with the
tuple), and do-checkpoint releases the held reply.  ARP passes straight through (the
routed PVM resolves its gateway, the bridged one its client, with the node attached).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from colo_env import insmod, report
from dp_topo import PVM_IP, PVM_PORT, Topo, recv_or_none, topology

from colo_proxy.nl import CheckpointNeededEvent, ColoClient, ColoEvents, Mode, Reason
from colo_proxy.nl.model import Node

pytestmark = pytest.mark.kernel

HOLD_MS = 600_000  # no timeout request during a test, even under TCG


@pytest.fixture(params=["bridged", "routed"])
def topo(request: pytest.FixtureRequest, colo_ko: Path) -> Iterator[Topo]:
    insmod(colo_ko)
    with topology(request.param == "bridged") as t:
        yield t


def wait_node(client: ColoClient, index: int, what: str, pred: object,
              timeout: float = 30.0) -> Node:
    deadline = time.monotonic() + timeout
    while True:
        node = client.get(index)
        if pred(node):  # type: ignore[operator]
            return node
        assert time.monotonic() < deadline, f"{what}: {node.dp_stats}"
        time.sleep(0.1)


def request_reply(topo: Topo, client_sock: socket.socket, server: socket.socket,
                  query: bytes, reply: bytes) -> int:
    """The client asks, the PVM answers; returns the client's port."""
    client_sock.sendto(query, (PVM_IP, PVM_PORT))
    server.settimeout(30)
    got, addr = server.recvfrom(65535)
    assert got == query
    server.sendto(reply, addr)
    return int(client_sock.getsockname()[1])


def diverged_reply(topo: Topo, client: ColoClient, *, index: int, csock: socket.socket,
                   server: socket.socket, svm: socket.socket,
                   events: ColoEvents) -> tuple[int, CheckpointNeededEvent]:
    """The PVM answers "token=PVM-1234", the SVM "token=SVM-9876": the client's port and
    the checkpoint-needed event that follows."""
    cport = request_reply(topo, csock, server, b"token?", b"token=PVM-1234")
    wait_node(client, index, "reply held", lambda n: n.dp_stats["held-packets"] == 1)
    svm.send(topo.svm_udp(PVM_PORT, topo.client_ip, cport, b"token=SVM-9876"))
    event = events.next(30)
    assert isinstance(event, CheckpointNeededEvent), event
    return cport, event


def test_same_svm_output_releases_without_checkpoint(topo: Topo,
                                                     request: pytest.FixtureRequest) -> None:
    with ColoClient(netns=topo.h) as client, ColoEvents(netns=topo.h) as events:
        node = client.proxy_init(Mode.PRIMARY, tap_ifindex=topo.tap_ifindex(),
                                 fwd_ifindex=topo.fwd_ifindex(), hold_timeout_ms=HOLD_MS)
        server = topo.udp(topo.p, PVM_IP, PVM_PORT)
        csock = topo.udp(topo.c, topo.client_ip, 0)
        svm = topo.svm_socket()
        try:
            for i in range(3):
                query, reply = f"q{i}".encode(), f"reply to q{i}".encode() * 20
                cport = request_reply(topo, csock, server, query, reply)
                wait_node(client, node.index, "reply held",
                          lambda n: n.dp_stats["held-packets"] == 1)
                assert recv_or_none(csock, 0.5) is None, "released before the SVM's copy"
                svm.send(topo.svm_udp(PVM_PORT, topo.client_ip, cport, reply))
                assert recv_or_none(csock, 30) == reply
            got = wait_node(client, node.index, "all matched",
                            lambda n: n.dp_stats["matched"] == 3)
            assert got.stats["checkpoint-requests"] == 0
            assert got.dp_stats["held-packets"] == 0
            assert got.dp_stats["released"] == 3
            assert got.dp_stats["mismatches"] == 0
            assert got.dp_stats["svm-frames"] == 3
            assert got.dp_stats["control-passed"] >= 1  # ARP of the PVM
            event = events.next(0.5)
            assert not isinstance(event, CheckpointNeededEvent), event
            report(request, f"{'bridged' if topo.bridged else 'routed'}: {got.dp_stats}")
        finally:
            for s in (server, csock, svm):
                s.close()


def test_different_svm_output_requests_checkpoint_then_releases(topo: Topo) -> None:
    with ColoClient(netns=topo.h) as client, ColoEvents(netns=topo.h) as events:
        node = client.proxy_init(Mode.PRIMARY, tap_ifindex=topo.tap_ifindex(),
                                 fwd_ifindex=topo.fwd_ifindex(), hold_timeout_ms=HOLD_MS)
        server = topo.udp(topo.p, PVM_IP, PVM_PORT)
        csock = topo.udp(topo.c, topo.client_ip, 0)
        svm = topo.svm_socket()
        try:
            cport, event = diverged_reply(topo, client, index=node.index, csock=csock,
                                          server=server, svm=svm, events=events)
            assert event.index == node.index
            assert event.reason == Reason.PAYLOAD_MISMATCH
            assert event.tuple is not None
            assert event.tuple.proto == socket.IPPROTO_UDP
            assert event.tuple.src == socket.inet_aton(PVM_IP)
            assert event.tuple.dst == socket.inet_aton(topo.client_ip)
            assert (event.tuple.sport, event.tuple.dport) == (PVM_PORT, cport)
            assert recv_or_none(csock, 0.5) is None, "a diverged reply left before the checkpoint"
            client.do_checkpoint(node.index)
            assert recv_or_none(csock, 30) == b"token=PVM-1234"
            got = client.get(node.index)
            assert got.dp_stats["mismatches"] == 1
            assert got.dp_stats["held-packets"] == 0
            assert got.stats["checkpoint-requests"] == 1
            assert got.stats["checkpoints"] == 1
            # after the checkpoint the connection starts over: a matching pair releases
            cport = request_reply(topo, csock, server, b"again", b"same")
            wait_node(client, node.index, "reply held", lambda n: n.dp_stats["held-packets"] == 1)
            svm.send(topo.svm_udp(PVM_PORT, topo.client_ip, cport, b"same"))
            assert recv_or_none(csock, 30) == b"same"
            assert client.get(node.index).stats["checkpoint-requests"] == 1
        finally:
            for s in (server, csock, svm):
                s.close()


def test_svm_frames_never_reach_the_host(topo: Topo) -> None:
    """Every forward-link frame is consumed: an SVM datagram addressed to the primary
    host itself, or to the client, is never delivered, even with no PVM frame to meet."""
    with ColoClient(netns=topo.h) as client:
        node = client.proxy_init(Mode.PRIMARY, tap_ifindex=topo.tap_ifindex(),
                                 fwd_ifindex=topo.fwd_ifindex(), hold_timeout_ms=HOLD_MS)
        csock = topo.udp(topo.c, topo.client_ip, 0)
        svm = topo.svm_socket()
        try:
            cport = int(csock.getsockname()[1])
            for i in range(5):
                svm.send(topo.svm_udp(PVM_PORT, topo.client_ip, cport, b"svm only %d" % i))
            got = wait_node(client, node.index, "SVM frames seen",
                            lambda n: n.dp_stats["svm-frames"] == 5)
            assert got.dp_stats["held-packets"] == 5
            assert recv_or_none(csock, 1.0) is None
            client.do_checkpoint(node.index)
            got = client.get(node.index)
            assert got.dp_stats["held-packets"] == 0
            assert recv_or_none(csock, 1.0) is None
        finally:
            csock.close()
            svm.close()


def test_timeout_raises_a_request_and_the_checkpoint_releases(topo: Topo) -> None:
    """No SVM copy: the timer raises checkpoint-needed (timeout) for the held reply."""
    with ColoClient(netns=topo.h) as client, ColoEvents(netns=topo.h) as events:
        node = client.proxy_init(Mode.PRIMARY, tap_ifindex=topo.tap_ifindex(),
                                 fwd_ifindex=topo.fwd_ifindex(), hold_timeout_ms=200)
        server = topo.udp(topo.p, PVM_IP, PVM_PORT)
        csock = topo.udp(topo.c, topo.client_ip, 0)
        try:
            request_reply(topo, csock, server, b"q", b"the SVM is stalled")
            event = events.next(60)
            assert isinstance(event, CheckpointNeededEvent), event
            assert event.reason == Reason.TIMEOUT
            assert event.tuple is not None and event.tuple.sport == PVM_PORT
            got = client.get(node.index)
            assert got.dp_stats["held-packets"] == 1
            assert got.stats["checkpoint-requests"] == 1
            client.do_checkpoint(node.index)
            assert recv_or_none(csock, 30) == b"the SVM is stalled"
        finally:
            server.close()
            csock.close()
