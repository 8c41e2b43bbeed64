"""SECCOLO with real TCP stacks: the SVM's bytes reach the primary in the PVM's numbering.

The PVM (``p``) and the SVM (``v``) run the same service on their own stacks, so their
ISNs differ; the client (``c``) talks to the PVM, and the primary host mirrors its frames
to the SVM (sec_topo.py).  What the SVM sends comes back on the forward link, captured in
the primary host: each of its data bytes must sit at the sequence number where the PVM
put the same byte.  Without the translation none would (the sec-translated-out counter,
which counts only edits that change a number, shows the offset was not 0).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from colo_env import insmod, report, wait_for
from sec_topo import (
    CLIENT_IP,
    PORT,
    VM_IP,
    Capture,
    SecTopo,
    Seg,
    Server,
    client_listener,
    payload,
    recv_exact,
    sec_topology,
    stream_bytes,
)

from colo_proxy.nl import ColoClient, Mode
from colo_proxy.nl.model import Node

pytestmark = pytest.mark.kernel

HANG = 120.0  # hang guards under TCG, not timing asserts


@pytest.fixture
def topo(colo_ko: Path) -> Iterator[SecTopo]:
    insmod(colo_ko)
    with sec_topology() as t:
        yield t


def attach(client: ColoClient, topo: SecTopo) -> Node:
    return client.proxy_init(Mode.SECONDARY, tap_ifindex=topo.tap_ifindex(),
                             fwd_ifindex=topo.fwd_ifindex())


def conn_segs(cap: Capture, src: str, sport: int, dport: int) -> list[Seg]:
    return [s for s in cap.segs(src) if s.sport == sport and s.dport == dport]


def data_bytes(cap: Capture, sport: int, dport: int) -> int:
    return sum(len(s.payload) for s in conn_segs(cap, VM_IP, sport, dport))


class SvmLead:
    """The PVM server's gate: wait until the SVM sent the start of the same answer."""

    def __init__(self, svm: Capture) -> None:
        self.svm = svm
        self.sent = 0
        self.lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self.lock:
            target = self.sent + min(n, 8000)
            self.sent += n
        wait_for(lambda: sum(len(s.payload) for s in self.svm.segs(VM_IP)) >= target,
                 HANG, f"the SVM's answer ({target} bytes sent)")


def check_numbering(pvm: Capture, svm: Capture, vm_port: int, peer_port: int,
                    total: int) -> int:
    """Every data byte the SVM sent is the PVM's byte at the same sequence number, once
    both captures hold ``total`` bytes.  Returns the number of SVM data bytes checked."""
    for cap, who in ((pvm, "PVM"), (svm, "SVM")):
        wait_for(lambda c=cap: data_bytes(c, vm_port, peer_port) >= total, HANG,
                 f"the {who}'s {total} bytes in the capture")
    psegs = conn_segs(pvm, VM_IP, vm_port, peer_port)
    ssegs = conn_segs(svm, VM_IP, vm_port, peer_port)
    psyn = [s for s in psegs if s.syn]
    assert psyn, "no SYN or SYN-ACK of the PVM captured"
    base = (psyn[0].seq + 1) % 2**32
    pstream = stream_bytes([s for s in psegs if s.payload], base)
    checked = 0
    for s in ssegs:
        if not s.payload:
            continue
        off = (s.seq - base) % 2**32
        missing = [i for i in range(len(s.payload)) if (off + i) not in pstream]
        want = bytes(pstream.get(off + i, 0) for i in range(len(s.payload)))
        assert not missing and want == s.payload, (
            f"SVM segment seq {s.seq} (offset {off}, {len(s.payload)} bytes) is not the "
            f"PVM's bytes there ({len(missing)} missing)")
        checked += len(s.payload)
    return checked


def exchange(csock: socket.socket, n: int, seed: int) -> None:
    csock.sendall(f"{n} {seed}\n".encode())
    assert recv_exact(csock, n, HANG) == payload(n, seed)


def test_client_initiated_connection_is_translated(topo: SecTopo,
                                                   request: pytest.FixtureRequest) -> None:
    svm_cap, pvm_cap = topo.capture_svm_output(), topo.capture_pvm_output()
    lead = SvmLead(svm_cap)
    pvm, svm = Server(topo, topo.p, gate=lead), Server(topo, topo.v)
    csock = topo.tcp(topo.c)
    try:
        with ColoClient(netns=topo.sh) as client:
            node = attach(client, topo)
            csock.settimeout(HANG)
            csock.connect((VM_IP, PORT))
            cport = csock.getsockname()[1]
            total = 0
            for seed, n in enumerate((1000, 30000, 5000)):
                exchange(csock, n, seed)
                total += n
                # the SVM answered too, and that answer came back on the forward link
                wait_for(lambda t=total: data_bytes(svm_cap, PORT, cport) >= t, HANG,
                         "the SVM's answers on the forward link")
            checked = check_numbering(pvm_cap, svm_cap, PORT, cport, total)
            got = client.get(node.index).sec_stats
            assert checked >= total
            assert got["translated-out"] > 0, got   # the ISNs really differed
            assert got["translated-in"] > 0, got    # the client's acks, to the SVM's
            assert got["flows"] == 1, got
            assert got["fwd-frames"] > 0 and got["svm-frames"] > 0, got
            assert not pvm.errors and not svm.errors, (pvm.errors, svm.errors)
            report(request, f"{checked} SVM bytes in the PVM's numbering; {got}")
    finally:
        csock.close()
        pvm.close()
        svm.close()
        svm_cap.stop()
        pvm_cap.stop()


def vm_connect(topo: SecTopo, ns: str, sport: int, dport: int) -> socket.socket:
    sock = topo.tcp(ns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((VM_IP, sport))
    sock.setblocking(False)
    sock.connect_ex((CLIENT_IP, dport))  # EINPROGRESS: the SYN is on its way
    return sock


def sendall_thread(sock: socket.socket, data: bytes, errors: list[str]) -> threading.Thread:
    def run() -> None:
        try:
            sock.settimeout(HANG)
            sock.sendall(data)
        except OSError as e:
            errors.append(repr(e))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_svm_initiated_connection_is_translated(topo: SecTopo,
                                                request: pytest.FixtureRequest) -> None:
    """The VMs open a connection to the client (same source port on both): the SVM's SYN
    leaves in its own numbering, the client's SYN-ACK gives the PVM's, and the SVM's data
    then reaches the primary in the PVM's numbering."""
    svm_cap, pvm_cap = topo.capture_svm_output(), topo.capture_pvm_output()
    listener = client_listener(topo, PORT + 1, HANG)
    vport = 40123
    socks: list[socket.socket] = [listener]
    errors: list[str] = []
    data = payload(40000, 9)
    try:
        with ColoClient(netns=topo.sh) as client:
            node = attach(client, topo)
            # the SVM first: its SYN opens the flow before the client's SYN-ACK reaches it
            s_sock = vm_connect(topo, topo.v, vport, PORT + 1)
            socks.append(s_sock)
            wait_for(lambda: any(s.syn for s in conn_segs(svm_cap, VM_IP, vport, PORT + 1)),
                     HANG, "the SVM's SYN on the forward link")
            p_sock = vm_connect(topo, topo.p, vport, PORT + 1)
            socks.append(p_sock)
            conn, _ = listener.accept()
            socks.append(conn)
            wait_for(lambda: client.get(node.index).sec_stats["translated-in"] > 0, HANG,
                     "the client's SYN-ACK translated for the SVM")
            ts = sendall_thread(s_sock, data, errors)
            wait_for(lambda: data_bytes(svm_cap, vport, PORT + 1) >= 8000, HANG,
                     "the SVM's first data")
            tp = sendall_thread(p_sock, data, errors)
            assert recv_exact(conn, len(data), HANG) == data
            tp.join(HANG)
            ts.join(HANG)
            wait_for(lambda: data_bytes(svm_cap, vport, PORT + 1) >= len(data), HANG,
                     "all of the SVM's data")
            checked = check_numbering(pvm_cap, svm_cap, vport, PORT + 1, len(data))
            got = client.get(node.index).sec_stats
            assert checked >= len(data)
            assert got["translated-out"] > 0, got
            assert got["flows"] == 1, got
            assert not errors, errors
            report(request, f"{checked} SVM bytes in the PVM's numbering; {got}")
    finally:
        for s in socks:
            s.close()
        svm_cap.stop()
        pvm_cap.stop()


def test_checkpoint_forgets_translations(topo: SecTopo) -> None:
    """do-checkpoint empties the table (the restored SVM is numbered as the PVM; the
    namespace SVM here is not restored, so the test checks the table, not the old
    connection).  A connection opened after it is translated again."""
    svm_cap = topo.capture_svm_output()
    lead = SvmLead(svm_cap)
    pvm, svm = Server(topo, topo.p, gate=lead), Server(topo, topo.v)
    socks: list[socket.socket] = []
    try:
        with ColoClient(netns=topo.sh) as client:
            node = attach(client, topo)
            for round_ in range(2):
                csock = topo.tcp(topo.c)
                socks.append(csock)
                csock.settimeout(HANG)
                csock.connect((VM_IP, PORT))
                exchange(csock, 3000, round_)
                got = client.get(node.index).sec_stats
                assert got["flows"] == 1, got
                assert got["translated-out"] > 0, got
                client.do_checkpoint(node.index)
                got = client.get(node.index).sec_stats
                assert got["flows"] == 0, got
                assert client.get(node.index).stats["checkpoints"] == round_ + 1
    finally:
        for s in socks:
            s.close()
        pvm.close()
        svm.close()
        svm_cap.stop()


def test_failover_keeps_open_connection(topo: SecTopo, request: pytest.FixtureRequest) -> None:
    """The primary host is lost mid-connection, the secondary fails over and its SVM
    joins the client network: the client's open connection goes on, byte-exact, now
    served by the SVM in the translated numbering; a new connection is not translated."""
    svm_cap, pvm_cap = topo.capture_svm_output(), topo.capture_pvm_output()
    lead = SvmLead(svm_cap)
    pvm, svm = Server(topo, topo.p, gate=lead), Server(topo, topo.v)
    csock = topo.tcp(topo.c)
    socks = [csock]
    from_sec = None
    try:
        with ColoClient(netns=topo.sh) as client:
            node = attach(client, topo)
            csock.settimeout(HANG)
            csock.connect((VM_IP, PORT))
            cport = csock.getsockname()[1]
            exchange(csock, 20000, 1)
            wait_for(lambda: data_bytes(svm_cap, PORT, cport) >= 20000, HANG,
                     "the SVM's answer on the forward link")
            psyn = [s for s in conn_segs(pvm_cap, VM_IP, PORT, cport) if s.syn]
            assert psyn
            base = (psyn[0].seq + 1) % 2**32
            topo.lose_primary()
            from_sec = topo.capture_from_secondary()
            client.do_failover(node.index)
            topo.svm_to_client_network()
            before = client.get(node.index).sec_stats
            for seed in (2, 3):
                exchange(csock, 20000, seed)
            got = client.get(node.index).sec_stats
            assert got["translated-out"] > before["translated-out"], (before, got)
            assert got["translated-in"] > before["translated-in"], (before, got)
            # what the client network got from the secondary: the PVM's numbering,
            # continuing the stream where the PVM left it (byte 20000 of its answers)
            segs = [s for s in from_sec.segs(VM_IP) if s.dport == cport and s.payload]
            assert segs, "the SVM's answers did not come from the secondary host"
            offsets = {(s.seq - base) % 2**32 for s in segs}
            assert 20000 in offsets, sorted(offsets)[:5]
            assert max(offsets) < 60000, sorted(offsets)[-5:]
            # a new connection after failover works and is not translated
            flows = got["flows"]
            c2 = topo.tcp(topo.c)
            socks.append(c2)
            c2.settimeout(HANG)
            c2.connect((VM_IP, PORT))
            exchange(c2, 5000, 7)
            assert client.get(node.index).sec_stats["flows"] == flows
            assert not svm.errors, svm.errors
            report(request, f"after failover: {got}")
    finally:
        for s in socks:
            s.close()
        pvm.close()
        svm.close()
        svm_cap.stop()
        pvm_cap.stop()
        if from_sec is not None:
            from_sec.stop()

