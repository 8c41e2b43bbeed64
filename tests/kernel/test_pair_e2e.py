"""Both hosts in the kernel: PMYCOLO on the primary host, SECCOLO on the secondary.

The six namespaces of sec_topo.py, with a primary node on the primary host's tap0 and
fwd0 as well as the secondary node: the client talks to the PVM, the primary host
mirrors every frame to the PVM onto the forward link, the secondary host hands it to
the SVM and sends the SVM's output, translated into the PVM's numbering, back on the
forward link, where the primary node compares it with the PVM's held output and
releases the PVM's frames.  The PVM and the SVM are namespaces with their own TCP
stacks (their ISNs really differ; no syncookie trick) running the same services.

Here, unlike test_sec_tcp.py, no gate in the PVM's server models the primary's hold:
the hold is the primary node's, so the client never acknowledges a byte the SVM has not
sent.  What a checkpoint means with namespace "VMs" (they cannot copy state) is in
docs/secondary.md, "What the tests model".
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from colo_env import PY, insmod, report, wait_for
from sec_topo import (
    PORT,
    VM_IP,
    Capture,
    SecTopo,
    Server,
    client_listener,
    payload,
    primary_ifindexes,
    recv_exact,
    sec_topology,
    sh,
)
from test_sec_tcp import data_bytes, sendall_thread, vm_connect

from colo_proxy.nl import CheckpointNeededEvent, ColoClient, ColoEvents, Mode
from colo_proxy.nl.model import Node

pytestmark = pytest.mark.kernel

HANG = float(os.environ.get("PAIR_HANG", "300"))  # hang guards under TCG, not timing asserts
HOLD_MS = 600_000  # no timeout request unless a test wants one
HTTP_PORT = 8080
BULK = 50_000_000

# The same HTTP service in the PVM and in the SVM.  The Date header is fixed: two real
# servers would otherwise differ whenever a second boundary falls between their answers.
SERVER = r"""
import http.server, sys
PAGE = b"".join(b"line %05d of the deterministic page\n" % i for i in range(100))
BLOCK = bytes(range(256)) * 256
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def date_time_string(self, timestamp=None):
        return "Thu, 01 Jan 1970 00:00:00 GMT"
    def do_GET(self):
        if self.path == "/page":
            self.reply(PAGE)
            return
        n = int(self.path[len("/bulk/"):])
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        while n > 0:
            chunk = BLOCK[:min(n, len(BLOCK))]
            self.wfile.write(chunk)
            n -= len(chunk)
    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
print("ready", flush=True)
srv.serve_forever()
"""
PAGE = b"".join(b"line %05d of the deterministic page\n" % i for i in range(100))
BLOCK = bytes(range(256)) * 256


def bulk_sha(n: int) -> str:
    h = hashlib.sha256()
    while n > 0:
        chunk = BLOCK[: min(n, len(BLOCK))]
        h.update(chunk)
        n -= len(chunk)
    return h.hexdigest()


@dataclass
class Pair:
    topo: SecTopo
    primary: ColoClient
    secondary: ColoClient
    pindex: int
    sindex: int

    def pnode(self) -> Node:
        return self.primary.get(self.pindex)

    def snode(self) -> Node:
        return self.secondary.get(self.sindex)

    def checkpoint(self) -> None:
        """What the VMMs' checkpoint does to both hosts' nodes: the secondary's first
        (its translations go), then the primary's (held PVM output released)."""
        self.secondary.do_checkpoint(self.sindex)
        self.primary.do_checkpoint(self.pindex)


@pytest.fixture
def topo(colo_ko: Path) -> Iterator[SecTopo]:
    insmod(colo_ko)
    with sec_topology() as t:
        servers = [spawn(ns, SERVER, VM_IP, str(HTTP_PORT)) for ns in (t.p, t.v)]
        try:
            yield t
        finally:
            for proc in servers:
                stop(proc)


def spawn(ns: str, script: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, *PY, "-c", script, *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        stop(proc)
        raise AssertionError(f"the server in {ns} did not start")
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=60)
    if proc.stdout is not None:
        proc.stdout.close()


@contextmanager
def pair(topo: SecTopo, hold_timeout_ms: int = HOLD_MS) -> Iterator[Pair]:
    """Both nodes, each owned by its host's own netlink socket."""
    tap, fwd = primary_ifindexes(topo)
    with ColoClient(netns=topo.sh) as sclient, ColoClient(netns=topo.ph) as pclient:
        snode = sclient.proxy_init(
            Mode.SECONDARY, tap_ifindex=topo.tap_ifindex(), fwd_ifindex=topo.fwd_ifindex()
        )
        pnode = pclient.proxy_init(
            Mode.PRIMARY,
            tap_ifindex=tap,
            fwd_ifindex=fwd,
            hold_timeout_ms=hold_timeout_ms,
            max_held_bytes=1 << 30,
        )
        pr = Pair(topo, pclient, sclient, pnode.index, snode.index)
        try:
            yield pr
        except (AssertionError, OSError) as e:  # a stall or a wrong answer: the state
            raise AssertionError(f"{e!r}; {diagnosis(pr)}") from e


def diagnosis(p: Pair) -> str:
    """What both nodes and the stacks say, for a failure message."""
    found = []
    for name, get in (("primary", p.pnode), ("secondary", p.snode)):
        try:
            node = get()
            found.append(f"{name} {node.stats} {node.dp_stats or node.sec_stats}")
        except Exception as e:  # the node may be gone (failover)
            found.append(f"{name}: {e!r}")
    return "; ".join(found) + f"; drops {drops(p.topo)}"


def http_connect(topo: SecTopo) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection(VM_IP, HTTP_PORT, timeout=HANG)
    conn.sock = topo.tcp(topo.c)
    conn.sock.settimeout(HANG)
    conn.sock.connect((VM_IP, HTTP_PORT))
    return conn


def get(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200
    return resp.read()


def get_bulk_sha(
    conn: http.client.HTTPConnection, n: int, progress: list[int] | None = None
) -> str:
    conn.request("GET", f"/bulk/{n}")
    resp = conn.getresponse()
    assert resp.status == 200
    h = hashlib.sha256()
    got = 0
    while got < n:
        chunk = resp.read(min(1 << 20, n - got))
        if not chunk:
            raise AssertionError(f"bulk answer ended after {got} of {n} bytes")
        h.update(chunk)
        got += len(chunk)
        if progress is not None:
            progress[0] = got
    return h.hexdigest()


def drops(topo: SecTopo) -> dict[str, int]:
    """Frames the stacks dropped: per device (rx and tx, nonzero ones) and the
    backlog's (softnet_stat's second column, all CPUs)."""
    found: dict[str, int] = {}
    for ns in topo.names():
        out = subprocess.run(
            ["ip", "-n", ns, "-j", "-s", "link", "show"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        for link in json.loads(out or "[]"):
            st = link.get("stats64", {})
            n = st.get("rx", {}).get("dropped", 0) + st.get("tx", {}).get("dropped", 0)
            if n:
                found[f"{ns.rsplit('-', 1)[-1]}/{link['ifname']}"] = n
    found["backlog"] = sum(
        int(line.split()[1], 16) for line in Path("/proc/net/softnet_stat").read_text().splitlines()
    )
    return found


def fetch_in_background(
    conn: http.client.HTTPConnection,
    n: int,
    progress: list[int],
    result: list[str],
    errors: list[str],
) -> threading.Thread:
    """GET /bulk/n in a thread (its digest into ``result``); returns once a quarter
    of it arrived, or the thread ended."""

    def fetch() -> None:
        try:
            result.append(get_bulk_sha(conn, n, progress))
        except Exception as e:
            errors.append(repr(e))

    t = threading.Thread(target=fetch, daemon=True)
    t.start()
    wait_for(lambda: progress[0] >= n // 4 or not t.is_alive(), HANG, "a quarter of the transfer")
    return t


def settled(p: Pair) -> Node:
    """The primary node once nothing is held any more."""
    wait_for(lambda: p.pnode().dp_stats["held-packets"] == 0, HANG, "nothing held")
    return p.pnode()


def test_http_and_bulk_without_checkpoint(topo: SecTopo, request: pytest.FixtureRequest) -> None:
    """New and keep-alive HTTP connections and a 50 MB transfer through both hosts'
    kernel datapaths: 0 checkpoint requests, the client gets exactly the PVM's bytes,
    and the secondary had to translate (the ISNs differed)."""
    from_sec = topo.capture_from_secondary()
    try:
        with pair(topo) as p:
            for _ in range(3):
                conn = http_connect(topo)
                assert get(conn, "/page") == PAGE
                conn.close()
            conn = http_connect(topo)
            assert get(conn, "/page") == PAGE
            try:
                got = get_bulk_sha(conn, BULK)
            except TimeoutError:
                raise AssertionError(
                    f"transfer stalled: primary {p.pnode().dp_stats}; "
                    f"secondary {p.snode().sec_stats}; drops {drops(topo)}"
                ) from None
            assert got == bulk_sha(BULK)
            assert get(conn, "/page") == PAGE
            conn.close()
            pn = settled(p)
            sn = p.snode()
            assert pn.stats["checkpoint-requests"] == 0, pn.dp_stats
            assert pn.dp_stats["mismatches"] == 0, pn.dp_stats
            assert pn.dp_stats["matched"] > 0, pn.dp_stats
            assert pn.dp_stats["svm-frames"] > 0, pn.dp_stats
            assert sn.sec_stats["translated-out"] > 0, sn.sec_stats  # ISNs differed
            assert sn.sec_stats["translated-in"] > 0, sn.sec_stats
            assert sn.sec_stats["flows"] == 0, sn.sec_stats  # closed: forgotten
            assert from_sec.count() == 0, "a frame of the secondary host reached the client network"
            report(request, f"primary {pn.dp_stats}; secondary {sn.sec_stats}")
    finally:
        from_sec.stop()


def test_svm_initiated_connection_without_checkpoint(
    topo: SecTopo, request: pytest.FixtureRequest
) -> None:
    """Both VMs open the same connection to the client: the client sees one
    connection, the PVM's bytes, and the primary compares the SVM's translated stream
    with 0 checkpoint requests."""
    listener = client_listener(topo, PORT + 1, HANG)
    vport = 40123
    socks: list[socket.socket] = [listener]
    errors: list[str] = []
    data = payload(2_000_000, 5)
    svm_cap = topo.capture_svm_output()
    try:
        with pair(topo) as p:
            s_sock = vm_connect(topo, topo.v, vport, PORT + 1)
            socks.append(s_sock)
            p_sock = vm_connect(topo, topo.p, vport, PORT + 1)
            socks.append(p_sock)
            conn, _ = listener.accept()
            socks.append(conn)
            threads = [sendall_thread(s, data, errors) for s in (s_sock, p_sock)]
            assert recv_exact(conn, len(data), HANG) == data
            for t in threads:
                t.join(HANG)
            reply = payload(100_000, 6)
            conn.sendall(reply)
            for s in (s_sock, p_sock):
                s.setblocking(True)
            assert recv_exact(p_sock, len(reply), HANG) == reply
            assert recv_exact(s_sock, len(reply), HANG) == reply  # translated acks too
            wait_for(
                lambda: data_bytes(svm_cap, vport, PORT + 1) >= len(data),
                HANG,
                "all of the SVM's data on the forward link",
            )
            pn = settled(p)
            sn = p.snode()
            assert not errors, errors
            assert pn.stats["checkpoint-requests"] == 0, pn.dp_stats
            assert pn.dp_stats["mismatches"] == 0, pn.dp_stats
            assert sn.sec_stats["translated-out"] > 0, sn.sec_stats
            assert sn.sec_stats["flows"] == 1, sn.sec_stats
            report(request, f"primary {pn.dp_stats}; secondary {sn.sec_stats}")
    finally:
        for s in socks:
            s.close()
        svm_cap.stop()


class Agent:
    """The VMMs' side, as `colo-proxy run kernel --checkpoint flush` does it for the
    primary: every checkpoint request of the primary node is answered by a checkpoint
    of both nodes.  Its own sockets, in its own thread."""

    def __init__(self, topo: SecTopo, pindex: int, sindex: int) -> None:
        self.topo, self.pindex, self.sindex = topo, pindex, sindex
        self.requests: list[CheckpointNeededEvent] = []
        self.errors: list[str] = []
        self.stop_ev = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        # pyroute2 sockets belong to the thread that made them: all three are made
        # there, and the test goes on once the subscription is in place
        assert self.ready.wait(HANG), "the agent did not start"
        assert not self.errors, self.errors

    def _run(self) -> None:
        try:
            with (
                ColoEvents(netns=self.topo.ph, timeout=0.2) as events,
                ColoClient(netns=self.topo.sh) as sec,
                ColoClient(netns=self.topo.ph) as pri,
            ):
                self.ready.set()
                while not self.stop_ev.is_set():
                    ev = events.next(0.2)
                    if isinstance(ev, CheckpointNeededEvent) and ev.index == self.pindex:
                        self.requests.append(ev)
                        sec.do_checkpoint(self.sindex)
                        pri.do_checkpoint(self.pindex)
        except Exception as e:  # recorded, and the test fails on it
            self.errors.append(repr(e))
        finally:
            self.ready.set()

    def close(self) -> None:
        self.stop_ev.set()
        self.thread.join(10)


def test_checkpoint_mid_transfer_keeps_the_stream(
    topo: SecTopo, request: pytest.FixtureRequest
) -> None:
    """A checkpoint of both hosts while a transfer runs: the client's stream stays
    byte-exact.  The namespace SVM is not restored by it, so from then on it is a
    diverged SVM: the secondary forgot the connection's translation (its segments reach
    the primary untranslated), and each request the primary makes about it is
    answered with a checkpoint, which releases the PVM's held output."""
    n = 8_000_000
    progress = [0]
    result: list[str] = []
    errors: list[str] = []
    with pair(topo, hold_timeout_ms=500) as p:
        agent = Agent(topo, p.pindex, p.sindex)
        try:
            conn = http_connect(topo)
            assert get(conn, "/page") == PAGE

            t = fetch_in_background(conn, n, progress, result, errors)
            # the hold timeout is short, so a slow SVM (TCG) can already have made the
            # primary ask, and the agent checkpoint, before this point: then that was
            # the checkpoint mid-transfer, and the flow is gone already
            flows = p.snode().sec_stats["flows"]
            assert flows == 1 or agent.requests, "the flow went with no checkpoint"
            early = len(agent.requests)
            p.checkpoint()
            sn = p.snode()
            assert sn.sec_stats["flows"] == 0, sn.sec_stats
            # frames the secondary translated while the checkpoint ran are counted
            # by now; none is translated from here on
            out_before = sn.sec_stats["translated-out"]
            t.join(HANG)
            assert not t.is_alive(), (
                f"transfer stuck at {progress[0]} of {n} bytes after {len(agent.requests)} "
                f"requests: primary {p.pnode().stats} {p.pnode().dp_stats}; secondary "
                f"{p.snode().sec_stats}; {agent.errors}"
            )
            assert not errors, errors
            assert result == [bulk_sha(n)]
            # the translation stayed forgotten for this connection
            sn = p.snode()
            assert sn.sec_stats["translated-out"] == out_before, sn.sec_stats
            assert sn.sec_stats["flows"] == 0, sn.sec_stats
            # a new connection is translated again, and compared with no new request
            conn.close()
            settled(p)
            asked = len(agent.requests)
            conn = http_connect(topo)
            assert get(conn, "/page") == PAGE
            conn.close()
            pn = settled(p)
            assert p.snode().sec_stats["translated-out"] > out_before
            assert pn.stats["checkpoint-requests"] == asked, (asked, pn.stats)
            assert pn.stats["checkpoints"] >= 1 + asked, pn.stats
            assert not agent.errors, agent.errors
            report(
                request,
                f"{early} requests before the test's checkpoint, {asked} in all; "
                f"primary {pn.dp_stats}",
            )
        finally:
            agent.close()


def test_failover_mid_transfer_and_echo(topo: SecTopo, request: pytest.FixtureRequest) -> None:
    """The primary host is lost while a bulk transfer and a long-lived request/answer
    connection run: its node is destroyed and the secondary fails over.  Both go on for
    the client, byte-exact, without a reset; the secondary host's segments on the client
    network continue the PVM's numbering."""
    n = 20_000_000
    progress = [0]
    result: list[str] = []
    errors: list[str] = []
    pvm_echo, svm_echo = Server(topo, topo.p), Server(topo, topo.v)
    client_cap = Capture(topo.c, "eth0").start()
    from_sec: Capture | None = None
    csock = topo.tcp(topo.c)
    try:
        with pair(topo) as p:
            csock.settimeout(HANG)
            csock.connect((VM_IP, PORT))
            cport = csock.getsockname()[1]
            exchange(csock, 20000, 1)
            conn = http_connect(topo)
            bport = conn.sock.getsockname()[1]

            t = fetch_in_background(conn, n, progress, result, errors)
            # the primary host goes: off the client network, its PVM silent, its node
            # destroyed; the secondary fails over and its SVM joins the client network
            # (the order of a crash: nothing of the primary host's reaches the client
            # once it is gone, not even the PVM output its node releases on destroy)
            sh("ip", "-n", topo.n, "link", "set", "n_p", "down")
            p.primary.proxy_destroy(p.pindex)
            sh("ip", "-n", topo.ph, "link", "set", "tap0", "down")
            from_sec = topo.capture_from_secondary()
            p.secondary.do_failover(p.sindex)
            topo.svm_to_client_network()
            before = p.snode().sec_stats
            for seed in (2, 3):
                exchange(csock, 20000, seed)
            t.join(HANG)
            assert not t.is_alive(), f"transfer stuck at {progress[0]} of {n} bytes"
            assert not errors, errors
            assert result == [bulk_sha(n)]
            got = p.snode().sec_stats
            assert got["translated-out"] > before["translated-out"], (before, got)
            # the client saw one numbering per connection: the secondary's segments
            # continue the PVM's, byte for byte
            check_continuation(
                client_cap, from_sec, cport, b"".join(payload(20000, seed) for seed in (1, 2, 3))
            )
            check_continuation(
                client_cap, from_sec, bport, http_header(client_cap, bport) + bulk_body(n)
            )
            assert not any(s.flags & 0x04 for s in client_cap.segs(VM_IP)), "a reset"
            conn.close()
            assert not svm_echo.errors, svm_echo.errors
            report(request, f"after failover: secondary {got}")
    finally:
        csock.close()
        pvm_echo.close()
        svm_echo.close()
        client_cap.stop()
        if from_sec is not None:
            from_sec.stop()


def exchange(csock: socket.socket, n: int, seed: int) -> None:
    csock.sendall(f"{n} {seed}\n".encode())
    assert recv_exact(csock, n, HANG) == payload(n, seed)


def check_continuation(client_cap: Capture, from_sec: Capture, cport: int, expected: bytes) -> None:
    """Every data segment of the connection that came from the secondary host carries,
    at its sequence number in the numbering the client learnt from the PVM's SYN-ACK,
    the bytes the client expects there, and the last of them ends the stream."""
    syn = [s for s in client_cap.segs(VM_IP) if s.dport == cport and s.syn]
    assert syn, "the PVM's SYN-ACK did not reach the client"
    base = (syn[0].seq + 1) % 2**32
    sec = [s for s in from_sec.segs(VM_IP) if s.dport == cport and s.payload]
    assert sec, f"nothing of connection {cport} came from the secondary host"
    for s in sec:
        off = (s.seq - base) % 2**32
        assert expected[off : off + len(s.payload)] == s.payload, (
            f"connection {cport}: the secondary's segment seq {s.seq} is not the stream's "
            f"bytes at offset {off}"
        )
    assert max((s.seq - base) % 2**32 + len(s.payload) for s in sec) == len(expected)


def http_header(client_cap: Capture, cport: int) -> bytes:
    """The response header the client got from the PVM (its first data segment)."""
    syn = [s for s in client_cap.segs(VM_IP) if s.dport == cport and s.syn]
    base = (syn[0].seq + 1) % 2**32
    first = [s for s in client_cap.segs(VM_IP) if s.dport == cport and s.payload and s.seq == base]
    assert first and b"\r\n\r\n" in first[0].payload, "no response header captured"
    return first[0].payload[: first[0].payload.index(b"\r\n\r\n") + 4]


def bulk_body(n: int) -> bytes:
    return (BLOCK * (n // len(BLOCK) + 1))[:n]
