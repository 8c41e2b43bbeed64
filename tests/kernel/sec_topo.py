"""The secondary's datapath topology for the kernel tests (tests/kernel/test_sec_*.py).

Six namespaces, named ``colos-XXXXXXXX-{n,c,ph,p,sh,v}``:

* ``n``, the client network: bridge ``sw`` with ``n_c`` (peer ``eth0`` in ``c``, the
  client), ``n_p`` (peer ``up0`` in ``ph``) and ``n_s`` (peer ``up0`` in ``sh``).
* ``ph``, the primary host: bridge ``br0`` with ``up0`` and ``tap0`` (peer ``eth0`` in
  ``p``, the PVM).  Inbound mirroring as in production, by the product's
  ``colo_proxy.rules.mirror`` (``colo-proxy mirror apply``: ``tc mirred egress mirror``
  on ``tap0`` copies every frame sent to the PVM onto the forward link ``fwd0``, peer
  ``fwd0`` in ``sh``).  No PMYCOLO here: the frames the SVM sends back on ``fwd0`` are
  captured by the tests and then die in ``ph`` (not bridged, no address, no forwarding).
* ``sh``, the secondary host, where the SECCOLO node lives: ``tap0`` (peer ``eth0`` in
  ``v``, the SVM), ``fwd0``, and bridge ``br0`` with ``up0`` only.  The SVM's tap is not a
  bridge port and ``sh`` does not forward, so without a node the SVM's frames reach
  nothing (the isolation that holds before a node exists and after it is gone: the
  wiring's, docs/secondary.md).  Failover enslaves ``tap0`` to ``br0``.

The PVM and SVM have the same MAC and address (the SVM is a copy) and their own TCP
stacks; their ISNs really differ.  TCP timestamps are off in both (docs/compare.md:
Linux drops a handshake ACK whose TSecr its own SYN-ACK did not carry).  Neighbours are
static, so no ARP is needed.  IPv6 is off everywhere.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import netns as pyr_netns

from colo_proxy.errors import ColoError
from colo_proxy.rules import mirror

VM_IP = "10.78.0.2"
VM_MAC = "52:54:00:00:78:02"
CLIENT_IP = "10.78.0.3"
CLIENT_MAC = "52:54:00:00:78:03"
PORT = 7100

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def sh(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, text=True)


def ip(ns: str, *args: str) -> None:
    sh("ip", "-n", ns, *args)


def nsexec(ns: str, *args: str) -> None:
    sh("ip", "netns", "exec", ns, *args)


@contextmanager
def in_netns(ns: str) -> Iterator[None]:
    pyr_netns.pushns(ns)
    try:
        yield
    finally:
        pyr_netns.popns()


def ifindex(ns: str, dev: str) -> int:
    with in_netns(ns):
        return socket.if_nametoindex(dev)


@dataclass(frozen=True)
class Seg:
    """One TCP segment from a capture (Ethernet, IPv4)."""

    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes
    src_mac: bytes

    @property
    def syn(self) -> bool:
        return bool(self.flags & 0x02)


def parse_frame(frame: bytes) -> Seg | None:
    if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    total = struct.unpack("!H", frame[16:18])[0]
    if frame[23] != socket.IPPROTO_TCP:
        return None
    ipb = frame[14:14 + total]
    th = ipb[ihl:]
    if len(th) < 20:
        return None
    sport, dport, seq, ack = struct.unpack("!HHII", th[:12])
    doff = (th[12] >> 4) * 4
    return Seg(socket.inet_ntoa(ipb[12:16]), socket.inet_ntoa(ipb[16:20]), sport, dport,
               seq, ack, th[13], bytes(th[doff:]), frame[6:12])


@dataclass
class Capture:
    """Every frame received (not sent) on one device, in a thread."""

    ns: str
    dev: str
    frames: list[bytes] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Capture:
        with in_netns(self.ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: no loss
        self.sock.bind((self.dev, ETH_P_ALL))
        self.sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(262144)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            with self._lock:
                self.frames.append(data)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sock.close()

    def segs(self, src: str | None = None) -> list[Seg]:
        with self._lock:
            frames = list(self.frames)
        out = [s for s in (parse_frame(f) for f in frames) if s is not None]
        return [s for s in out if src is None or s.src == src]

    def snapshot(self) -> list[bytes]:
        with self._lock:
            return list(self.frames)

    def count(self) -> int:
        with self._lock:
            return len(self.frames)


def stream_bytes(segs: list[Seg], base: int) -> dict[int, int]:
    """Byte offset (seq - base, mod 2**32) -> byte, over the data segments."""
    out: dict[int, int] = {}
    for s in segs:
        off = (s.seq - base) % 2**32
        for i, b in enumerate(s.payload):
            out[off + i] = b
    return out


@dataclass
class SecTopo:
    prefix: str

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    @property
    def n(self) -> str:
        return self.ns("n")

    @property
    def c(self) -> str:
        return self.ns("c")

    @property
    def ph(self) -> str:
        return self.ns("ph")

    @property
    def p(self) -> str:
        return self.ns("p")

    @property
    def sh(self) -> str:
        return self.ns("sh")

    @property
    def v(self) -> str:
        return self.ns("v")

    def names(self) -> list[str]:
        return [self.n, self.c, self.ph, self.p, self.sh, self.v]

    def build(self) -> None:
        for ns in self.names():
            sh("ip", "netns", "add", ns)
            nsexec(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            nsexec(ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
            ip(ns, "link", "set", "lo", "up")
        for dev, peer_ns, peer in (("n_c", self.c, "eth0"), ("n_p", self.ph, "up0"),
                                   ("n_s", self.sh, "up0")):
            ip(self.n, "link", "add", dev, "type", "veth", "peer", "name", peer,
               "netns", peer_ns)
        ip(self.ph, "link", "add", "tap0", "type", "veth", "peer", "name", "eth0",
           "netns", self.p)
        ip(self.sh, "link", "add", "tap0", "type", "veth", "peer", "name", "eth0",
           "netns", self.v)
        ip(self.ph, "link", "add", "fwd0", "type", "veth", "peer", "name", "fwd0",
           "netns", self.sh)
        for ns in (self.n, self.ph, self.sh):
            ip(ns, "link", "add", "br0" if ns != self.n else "sw", "type", "bridge",
               "stp_state", "0", "forward_delay", "0")
        for dev in ("n_c", "n_p", "n_s"):
            ip(self.n, "link", "set", dev, "master", "sw")
            ip(self.n, "link", "set", dev, "up")
        ip(self.n, "link", "set", "sw", "up")
        for dev in ("tap0", "up0"):
            ip(self.ph, "link", "set", dev, "master", "br0")
        ip(self.sh, "link", "set", "up0", "master", "br0")
        for ns, devs in ((self.ph, ("tap0", "up0", "fwd0", "br0")),
                         (self.sh, ("tap0", "up0", "fwd0", "br0"))):
            for dev in devs:
                ip(ns, "link", "set", dev, "up")
        for ns in (self.ph, self.sh):
            nsexec(ns, "sysctl", "-qw", "net.ipv4.ip_forward=0")
        for ns, addr, mac, peer, peer_mac in (
                (self.c, CLIENT_IP, CLIENT_MAC, VM_IP, VM_MAC),
                (self.p, VM_IP, VM_MAC, CLIENT_IP, CLIENT_MAC),
                (self.v, VM_IP, VM_MAC, CLIENT_IP, CLIENT_MAC)):
            ip(ns, "link", "set", "eth0", "address", mac)
            ip(ns, "addr", "add", addr + "/24", "dev", "eth0")
            ip(ns, "link", "set", "eth0", "up")
            ip(ns, "neigh", "replace", peer, "lladdr", peer_mac, "dev", "eth0",
               "nud", "permanent")
        for ns in (self.p, self.v):
            nsexec(ns, "sysctl", "-qw", "net.ipv4.tcp_timestamps=0")
            # segments of one MSS in both VMs, so that their segment boundaries agree
            # (docs/secondary.md, "Segment boundaries")
            nsexec(ns, "ethtool", "-K", "eth0", "tso", "off", "gso", "off")
        # inbound mirroring on the primary host, by the product (colo-proxy mirror
        # apply: clsact + matchall + mirred, marked): every frame to the PVM, also to fwd0
        assert mirror.apply("tap0", "fwd0", self.ph).status.classifier == "matchall"

    def destroy(self) -> None:
        if Path("/run/netns", self.ph).exists():
            with contextlib.suppress(ColoError):  # tap0 gone already (a failover test)
                mirror.remove("tap0", netns=self.ph)  # and its record in /run/colo-proxy
        for ns in self.names():
            if Path("/run/netns", ns).exists():
                subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

    def tap_ifindex(self) -> int:
        return ifindex(self.sh, "tap0")

    def fwd_ifindex(self) -> int:
        return ifindex(self.sh, "fwd0")

    # -- the two hosts' roles --------------------------------------------------------
    def lose_primary(self) -> None:
        """The primary host is gone: off the client network, its PVM silent."""
        ip(self.n, "link", "set", "n_p", "down")
        ip(self.ph, "link", "set", "tap0", "down")

    def svm_to_client_network(self) -> None:
        """Failover wiring: the SVM's tap joins the secondary host's bridge."""
        ip(self.sh, "link", "set", "tap0", "master", "br0")

    # -- captures and sockets ----------------------------------------------------------
    def capture_svm_output(self) -> Capture:
        """What reaches the primary host on the forward link (the SVM's output)."""
        return Capture(self.ph, "fwd0").start()

    def capture_pvm_output(self) -> Capture:
        return Capture(self.ph, "tap0").start()

    def capture_from_secondary(self) -> Capture:
        """What the secondary host puts on the client network."""
        return Capture(self.n, "n_s").start()

    def tcp(self, ns: str) -> socket.socket:
        with in_netns(ns):
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


@contextmanager
def sec_topology() -> Iterator[SecTopo]:
    topo = SecTopo(f"colos-{secrets.token_hex(4)}")
    try:
        topo.build()
        yield topo
    finally:
        topo.destroy()


def payload(n: int, seed: int) -> bytes:
    """Deterministic bytes, the same in the PVM and the SVM."""
    block = bytes((seed * 31 + i * 7) & 0xFF for i in range(251))
    return (block * (n // len(block) + 1))[:n]


class Server:
    """The same service in the PVM and the SVM: each request line "N SEED" is answered
    with payload(N, SEED).  One thread per accepted connection."""

    def __init__(self, topo: SecTopo, ns: str,
                 gate: Callable[[int], None] | None = None) -> None:
        self.gate = gate
        self.sock = topo.tcp(ns)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((VM_IP, PORT))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stop_ev = threading.Event()
        self.conns: list[socket.socket] = []
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop_ev.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=serve, args=(conn, self.stop_ev, self.errors, self.gate),
                             daemon=True).start()

    def close(self) -> None:
        self.stop_ev.set()
        self.thread.join(5)
        self.sock.close()
        for c in self.conns:
            c.close()


def serve(conn: socket.socket, stop_ev: threading.Event, errors: list[str],
          gate: Callable[[int], None] | None) -> None:
    """Answer request lines; ``gate(n)`` runs before each answer (the PVM's server waits
    there until the SVM has sent the start of its own answer, as COLO's primary would
    hold the PVM's output: the client then never acknowledges bytes the SVM has not sent,
    which its stack would discard with the segment)."""
    conn.settimeout(0.5)
    buf = b""
    while not stop_ev.is_set():
        try:
            data = conn.recv(65536)
        except TimeoutError:
            continue
        except OSError as e:
            errors.append(repr(e))
            return
        if not data:
            conn.close()
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            n, seed = (int(x) for x in line.split())
            try:
                if gate is not None:
                    gate(n)
                conn.settimeout(120)
                conn.sendall(payload(n, seed))
                conn.settimeout(0.5)
            except (OSError, AssertionError) as e:  # a gate that gave up: recorded
                errors.append(repr(e))
                return


def recv_exact(sock: socket.socket, n: int, timeout: float = 120) -> bytes:
    sock.settimeout(timeout)
    out = b""
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            raise AssertionError(f"connection closed after {len(out)} of {n} bytes")
        out += data
    return out


def primary_ifindexes(topo: SecTopo) -> tuple[int, int]:
    """The primary host's (tap0, fwd0): where a PMYCOLO node attaches (test_pair_*.py)."""
    return ifindex(topo.ph, "tap0"), ifindex(topo.ph, "fwd0")


def client_listener(topo: SecTopo, port: int, timeout: float) -> socket.socket:
    """A listening TCP socket of the client's, for connections the VMs open."""
    listener = topo.tcp(topo.c)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((CLIENT_IP, port))
    listener.listen(1)
    listener.settimeout(timeout)
    return listener
