"""The primary's datapath with TCP: compared by stream offset in the kernel.

An HTTP/1.1 server runs in the PVM (namespace ``p``); every frame it sends is also
copied to the secondary host (dp_topo ``svm_link``).  With the kernel SVM of
``svm_mirror`` the SVM's output is the PVM's, byte for byte (marked by its source MAC):
new and keep-alive connections and a bulk transfer then need no checkpoint, the client
gets exactly the PVM's bytes (sha256) and never an SVM frame.  A relay process as the
SVM, answering a random-token page with its own token, gives one payload-mismatch
request per response; do-checkpoint releases the held response and the stream goes on
intact.  A stopped relay (SIGSTOP) gives a timeout request.  Node loss (destroy, owner
SIGKILL) while the PVM's TCP frames are held releases them.

The bulk transfer is 8 MB: under TCG, with two vCPUs shared by the whole topology, that
is tens of seconds, and it is still 128 full 64 KB GSO frames through both hooks, far
beyond any window, so the core's pending-bytes buffers fill and drain many times.
"""

from __future__ import annotations

import ctypes
import hashlib
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from colo_env import PY, insmod
from dp_topo import PVM_IP, SVM_MAC, Topo, in_netns, topology
from test_dp_loss import OWNER, gone
from test_dp_udp import wait_node

from colo_proxy.nl import CheckpointNeededEvent, ColoClient, ColoEvents, GoneReason, Mode, Reason

pytestmark = pytest.mark.kernel

HOLD_MS = 600_000  # no timeout request during a test, even under TCG
HTTP_PORT = 8080
BULK = 8 << 20
SO_ATTACH_FILTER = 26
ETH_P_ALL = 3

SERVER = r"""
import http.server, os, sys
PAGE = b"".join(b"line %05d of the deterministic page\n" % i for i in range(100))
BLOCK = bytes(range(256)) * 256
def bulk(n):
    return b"".join((b"%08d" % i + BLOCK)[:65536] for i in range(n // 65536))
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/page":
            body = PAGE
        elif self.path == "/small":
            body = b"a small deterministic answer\n"
        elif self.path == "/token":
            body = b"token=" + os.urandom(8).hex().encode() + b"\n"
        else:
            body = bulk(int(self.path[len("/bulk/"):]))
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

# The SVM as a process: every copy of a PVM frame goes onto the forward link with the
# SVM's MAC, and each token replaced by one of its own (the SVM computed another).
RELAY = r"""
import os, re, socket, sys
rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
rx.bind(("eth1", 0))
tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
tx.bind(("eth0", 0))
mark = bytes.fromhex(sys.argv[1].replace(":", ""))
print("ready", flush=True)
while True:
    f = rx.recv(65600)
    f = f[:6] + mark + f[12:]
    f = re.sub(rb"token=[0-9a-f]{16}", lambda m: b"token=" + os.urandom(8).hex().encode(), f)
    tx.send(f)
"""

PAGE = b"".join(b"line %05d of the deterministic page\n" % i for i in range(100))
SMALL = b"a small deterministic answer\n"


def bulk_body(n: int) -> bytes:
    block = bytes(range(256)) * 256
    return b"".join((b"%08d" % i + block)[:65536] for i in range(n // 65536))


def spawn(ns: str, script: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, *PY, "-c", script, *args],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=60)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture(params=["bridged", "routed"])
def topo(request: pytest.FixtureRequest, colo_ko: Path) -> Iterator[Topo]:
    insmod(colo_ko)
    with topology(request.param == "bridged") as t:
        server = spawn(t.p, SERVER, PVM_IP, str(HTTP_PORT))
        try:
            yield t
        finally:
            stop(server)


def connect(topo: Topo, addr: str = PVM_IP) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection(addr, HTTP_PORT, timeout=300)
    with in_netns(topo.c):
        conn.connect()
    return conn


def get(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200
    return resp.read()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def svm_capture(topo: Topo) -> tuple[socket.socket, ctypes.Array[ctypes.c_char]]:
    """A capture on the client's link that keeps only frames from SVM_MAC (a classic
    BPF filter, attached before the socket is bound so that nothing else queues)."""
    mac = bytes.fromhex(SVM_MAC.replace(":", ""))
    hi, lo = struct.unpack("!IH", mac)
    prog = [(0x20, 0, 0, 6), (0x15, 0, 3, hi), (0x28, 0, 0, 10), (0x15, 0, 1, lo),
            (0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0)]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
    with in_netns(topo.c):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    struct.pack("HL", len(prog), ctypes.addressof(code)))
    sock.bind(("eth0", ETH_P_ALL))
    # The filter works: a frame the client itself sends from SVM_MAC is seen.
    tx.bind(("eth0", 0))
    tx.send(b"\xff" * 6 + mac + b"\x88\xb5" + b"colo-probe".ljust(46, b"\0"))
    tx.close()
    sock.settimeout(30)
    assert b"colo-probe" in sock.recv(65535)
    return sock, code


def no_svm_frame(sock: socket.socket) -> None:
    sock.settimeout(0.5)
    try:
        frame = sock.recv(65535)
    except TimeoutError:
        return
    raise AssertionError(f"an SVM frame reached the client: {frame[:64].hex()}")


def attach(client: ColoClient, topo: Topo, **kw: int) -> int:
    node = client.proxy_init(Mode.PRIMARY, tap_ifindex=topo.tap_ifindex(),
                             fwd_ifindex=topo.fwd_ifindex(), **kw)
    return node.index


def test_http_and_bulk_without_checkpoint(topo: Topo, request: pytest.FixtureRequest) -> None:
    topo.svm_mirror()
    with ColoClient(netns=topo.h) as client:
        index = attach(client, topo, hold_timeout_ms=HOLD_MS, max_held_bytes=1 << 30)
        cap, _prog = svm_capture(topo)
        try:
            for _ in range(3):  # new connections
                conn = connect(topo)
                assert sha(get(conn, "/page")) == sha(PAGE)
                conn.close()
            conn = connect(topo)  # keep-alive
            for path, body in (("/page", PAGE), ("/small", SMALL), ("/page", PAGE)):
                assert sha(get(conn, path)) == sha(body)
            assert sha(get(conn, f"/bulk/{BULK}")) == sha(bulk_body(BULK))
            conn.close()
            got = wait_node(client, index, "nothing held",
                            lambda n: n.dp_stats["held-packets"] == 0, timeout=120)
            assert got.stats["checkpoint-requests"] == 0, got.dp_stats
            assert got.dp_stats["mismatches"] == 0
            assert got.dp_stats["uncompared"] == 0
            assert got.dp_stats["matched"] > 0
            assert got.dp_stats["svm-frames"] > 0
            no_svm_frame(cap)
            report = f"{'bridged' if topo.bridged else 'routed'}: {got.dp_stats}"
            request.node.user_properties.append(("dp", report))
        finally:
            cap.close()


def test_http_over_vlan_without_checkpoint(topo: Topo) -> None:
    """Tagged frames: the stack moved the tag out of the frame before our hooks; the
    datapath puts it back, keys the connection by it and re-injects the frame tagged."""
    if not topo.bridged:
        pytest.skip("the VLAN runs through the bridge")
    pvm, _ = topo.vlan(5)
    topo.svm_mirror()
    server = spawn(topo.p, SERVER, pvm, str(HTTP_PORT))
    try:
        with ColoClient(netns=topo.h) as client:
            index = attach(client, topo, hold_timeout_ms=HOLD_MS)
            cap, _prog = svm_capture(topo)
            try:
                conn = connect(topo, pvm)
                for path, body in (("/page", PAGE), ("/small", SMALL), ("/page", PAGE)):
                    assert sha(get(conn, path)) == sha(body)
                conn.close()
                got = wait_node(client, index, "nothing held",
                                lambda n: n.dp_stats["held-packets"] == 0, timeout=120)
                assert got.stats["checkpoint-requests"] == 0, got.dp_stats
                assert got.dp_stats["mismatches"] == 0
                assert got.dp_stats["matched"] > 0
                no_svm_frame(cap)
            finally:
                cap.close()
    finally:
        stop(server)


def test_token_page_mismatch_then_checkpoint(topo: Topo) -> None:
    topo.svm_link()
    relay = spawn(topo.s, RELAY, SVM_MAC)
    try:
        with ColoClient(netns=topo.h) as client, ColoEvents(netns=topo.h) as events:
            index = attach(client, topo, hold_timeout_ms=HOLD_MS)
            conn = connect(topo)
            assert get(conn, "/small") == SMALL  # the same bytes: matched
            for i in range(2):
                result: list[bytes] = []
                reader = threading.Thread(target=lambda r=result: r.append(get(conn, "/token")))
                reader.start()
                event = events.next(120)
                while event is not None and not isinstance(event, CheckpointNeededEvent):
                    event = events.next(120)
                assert isinstance(event, CheckpointNeededEvent), event
                assert event.index == index
                assert event.reason == Reason.PAYLOAD_MISMATCH
                assert event.offset is not None  # exact values: test_dp_differential.py
                assert event.tuple is not None
                assert event.tuple.proto == socket.IPPROTO_TCP
                assert event.tuple.src == socket.inet_aton(PVM_IP)
                assert event.tuple.sport == HTTP_PORT
                reader.join(1.0)
                assert not result, "the diverged response left before the checkpoint"
                got = client.get(index)
                assert got.dp_stats["mismatches"] == i + 1
                assert got.dp_stats["held-packets"] >= 1
                client.do_checkpoint(index)
                reader.join(120)
                assert result and result[0].startswith(b"token=") and len(result[0]) == 23
                # the stream goes on intact, compared again
                assert get(conn, "/small") == SMALL
                got = client.get(index)
                assert got.stats["checkpoint-requests"] == i + 1
                assert got.stats["checkpoints"] == i + 1
                while events.next(0.5) is not None:
                    pass  # resends of this request, queued before do-checkpoint
            conn.close()
    finally:
        stop(relay)


def test_stalled_svm_gives_a_timeout_request(topo: Topo) -> None:
    topo.svm_link()
    relay = spawn(topo.s, RELAY, SVM_MAC)
    try:
        with ColoClient(netns=topo.h) as client, ColoEvents(netns=topo.h) as events:
            index = attach(client, topo, hold_timeout_ms=500)
            conn = connect(topo)
            assert get(conn, "/small") == SMALL
            os.kill(relay.pid, signal.SIGSTOP)
            result: list[bytes] = []
            reader = threading.Thread(target=lambda: result.append(get(conn, "/page")))
            reader.start()
            event = events.next(120)
            while event is not None and not isinstance(event, CheckpointNeededEvent):
                event = events.next(120)
            assert isinstance(event, CheckpointNeededEvent), event
            assert event.reason == Reason.TIMEOUT
            assert event.offset is None  # no difference to point at
            assert event.tuple is not None and event.tuple.sport == HTTP_PORT
            os.kill(relay.pid, signal.SIGCONT)
            client.do_checkpoint(index)
            # The SVM catches up; the response's tail (Nagle held it back until the
            # client's ACK) may time out again under TCG: checkpoint as an agent would.
            while reader.is_alive():
                event = events.next(1.0)
                if isinstance(event, CheckpointNeededEvent):
                    client.do_checkpoint(index)
            assert result == [PAGE]
            conn.close()
    finally:
        os.kill(relay.pid, signal.SIGCONT)
        stop(relay)


def held_handshake(topo: Topo, client: ColoClient, index: int) -> tuple[threading.Thread,
                                                                        list[bytes]]:
    """No SVM: the PVM's SYN-ACK is held, the client's connect waits for it."""
    result: list[bytes] = []

    def fetch() -> None:
        conn = connect(topo)
        result.append(get(conn, "/page"))
        conn.close()

    reader = threading.Thread(target=fetch)
    reader.start()
    wait_node(client, index, "SYN-ACK held", lambda n: n.dp_stats["held-packets"] >= 1,
              timeout=120)
    assert not result
    return reader, result


def test_destroy_releases_held_tcp(topo: Topo) -> None:
    with ColoClient(netns=topo.h) as client, ColoEvents(netns=topo.h) as events:
        index = attach(client, topo, hold_timeout_ms=HOLD_MS)
        reader, result = held_handshake(topo, client, index)
        client.proxy_destroy(index)
        event = gone(events, index)
        assert event.reason == GoneReason.DESTROYED
        assert event.dp_stats["flushed"] >= 1
        reader.join(120)
        assert result == [PAGE]


def test_owner_sigkill_releases_held_tcp(topo: Topo) -> None:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", topo.h, *PY, "-c", OWNER, str(topo.tap_ifindex()),
         str(topo.fwd_ifindex())], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        index = int(json.loads(proc.stdout.readline())["index"])
        with ColoClient(netns=topo.h) as client, ColoEvents(netns=topo.h) as events:
            reader, result = held_handshake(topo, client, index)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            event = gone(events, index)
            assert event.reason == GoneReason.OWNER_RELEASED
            assert event.dp_stats["flushed"] >= 1
            reader.join(120)
            assert result == [PAGE]
    finally:
        stop(proc)
