"""The primary's datapath topology for the kernel tests (tests/kernel/test_dp_*.py).

Four namespaces, named ``colot-XXXXXXXX-{h,p,c,s}``:

* ``h``, the primary host: the node lives here.  ``tap0`` is the PVM's tap (a veth whose
  peer is ``eth0`` in ``p``), ``up0`` the uplink (peer ``eth0`` in ``c``), ``fwd0`` the
  forward link (peer ``eth0`` in ``s``).  Bridged: ``tap0`` and ``up0`` in bridge ``br0``,
  one subnet.  Routed: ``h`` routes between 10.77.0.0/24 (PVM) and 10.77.1.0/24 (client).
* ``p``, the PVM; ``c``, the client; ``s``, the secondary host, from which the tests send
  the SVM's frames onto the forward link with a raw socket.
* For TCP services (``svm_link``), a copy of every frame the PVM sends: tc mirrors ``p``'s
  ``eth0`` egress to ``svm0``, whose peer is ``eth1`` in ``s``.  ``svm_mirror`` turns ``s``
  into a perfectly deterministic SVM in the kernel (each copy, its source MAC set to
  ``SVM_MAC``, redirected out of ``s``'s ``eth0`` onto the forward link); a relay process
  can do the same with changed bytes (tests/kernel/test_dp_tcp.py).

Sockets are opened in their namespace from the test process itself (pyroute2
pushns/popns), so no helper process runs per packet.  IPv6 is off everywhere, so no
MLD or RS frame of the PVM is held without an SVM copy.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import netns as pyr_netns
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

PVM_IP = "10.77.0.2"
PVM_PORT = 7000
SVM_MAC = "52:54:00:00:00:99"  # the source MAC of every SVM frame svm_mirror() sends


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


def link_up(ns: str, dev: str) -> bool:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "dev", dev], check=True,
                         capture_output=True, text=True).stdout
    return bool(json.loads(out)[0].get("operstate") == "UP")


def bridge_port_state(ns: str, dev: str) -> str:
    out = subprocess.run(["bridge", "-n", ns, "-j", "link", "show", "dev", dev], check=True,
                         capture_output=True, text=True).stdout
    ports = json.loads(out)
    return str(ports[0].get("state", "")) if ports else ""


@dataclass
class Topo:
    prefix: str
    bridged: bool

    @property
    def h(self) -> str:
        return self.prefix + "-h"

    @property
    def p(self) -> str:
        return self.prefix + "-p"

    @property
    def c(self) -> str:
        return self.prefix + "-c"

    @property
    def s(self) -> str:
        return self.prefix + "-s"

    @property
    def client_ip(self) -> str:
        return "10.77.0.3" if self.bridged else "10.77.1.2"

    def names(self) -> list[str]:
        return [self.h, self.p, self.c, self.s]

    def build(self) -> None:
        for ns in self.names():
            sh("ip", "netns", "add", ns)
            nsexec(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            nsexec(ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
            ip(ns, "link", "set", "lo", "up")
        for dev, peer_ns in (("tap0", self.p), ("up0", self.c), ("fwd0", self.s)):
            ip(self.h, "link", "add", dev, "type", "veth", "peer", "name", "eth0",
               "netns", peer_ns)
            ip(peer_ns, "link", "set", "eth0", "up")
            ip(self.h, "link", "set", dev, "up")
        if self.bridged:
            ip(self.h, "link", "add", "br0", "type", "bridge", "stp_state", "0",
               "forward_delay", "0")
            ip(self.h, "link", "set", "tap0", "master", "br0")
            ip(self.h, "link", "set", "up0", "master", "br0")
            ip(self.h, "link", "set", "br0", "up")
            ip(self.p, "addr", "add", PVM_IP + "/24", "dev", "eth0")
            ip(self.c, "addr", "add", self.client_ip + "/24", "dev", "eth0")
        else:
            nsexec(self.h, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            ip(self.h, "addr", "add", "10.77.0.1/24", "dev", "tap0")
            ip(self.h, "addr", "add", "10.77.1.1/24", "dev", "up0")
            ip(self.p, "addr", "add", PVM_IP + "/24", "dev", "eth0")
            ip(self.p, "route", "add", "default", "via", "10.77.0.1")
            ip(self.c, "addr", "add", self.client_ip + "/24", "dev", "eth0")
            ip(self.c, "route", "add", "default", "via", "10.77.1.1")
        self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every link can carry frames.  A new veth's carrier reaches its
        qdisc and the bridge port state through linkwatch, which runs up to a second
        later: a frame sent before that is dropped (noop qdisc, disabled port) without
        a trace.  Tests that send raw frames at once (the differential) lost their
        first frames that way on a quiet 6.1 guest."""
        links = [(self.h, "tap0"), (self.h, "up0"), (self.h, "fwd0"),
                 (self.p, "eth0"), (self.c, "eth0"), (self.s, "eth0")]
        if self.bridged:
            links.append((self.h, "br0"))
        deadline = time.monotonic() + timeout
        pending = links
        while True:
            pending = [(ns, dev) for ns, dev in pending if not link_up(ns, dev)]
            if self.bridged and not pending:
                pending = [(self.h, port) for port in ("tap0", "up0")
                           if bridge_port_state(self.h, port) != "forwarding"]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"links not ready after {timeout:.0f}s: {pending}")
            time.sleep(0.05)

    def destroy(self) -> None:
        for ns in self.names():
            if Path("/run/netns", ns).exists():
                subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

    def vlan(self, vid: int) -> tuple[str, str]:
        """Bridged only: the PVM and the client also talk over VLAN ``vid`` (the bridge
        forwards the tagged frames); returns the PVM's and the client's address on it."""
        pvm, client = f"10.77.{vid}.2", f"10.77.{vid}.3"
        for ns, addr in ((self.p, pvm), (self.c, client)):
            ip(ns, "link", "add", "link", "eth0", "name", f"eth0.{vid}", "type", "vlan",
               "id", str(vid))
            ip(ns, "addr", "add", addr + "/24", "dev", f"eth0.{vid}")
            ip(ns, "link", "set", f"eth0.{vid}", "up")
        return pvm, client

    def svm_link(self) -> None:
        """Every frame the PVM sends is also sent to ``eth1`` in ``s``."""
        ip(self.p, "link", "add", "svm0", "type", "veth", "peer", "name", "eth1",
           "netns", self.s)
        ip(self.p, "link", "set", "svm0", "up")
        ip(self.s, "link", "set", "eth1", "up")
        nsexec(self.p, "tc", "qdisc", "add", "dev", "eth0", "clsact")
        nsexec(self.p, "tc", "filter", "add", "dev", "eth0", "egress", "matchall",
               "action", "mirred", "egress", "mirror", "dev", "svm0")

    def svm_mirror(self) -> None:
        """A deterministic SVM: the copies go onto the forward link, marked SVM_MAC."""
        self.svm_link()
        nsexec(self.s, "tc", "qdisc", "add", "dev", "eth1", "clsact")
        nsexec(self.s, "tc", "filter", "add", "dev", "eth1", "ingress", "matchall",
               "action", "pedit", "ex", "munge", "eth", "src", "set", SVM_MAC, "pipe",
               "action", "mirred", "egress", "redirect", "dev", "eth0")

    def tap_ifindex(self) -> int:
        return ifindex(self.h, "tap0")

    def fwd_ifindex(self) -> int:
        return ifindex(self.h, "fwd0")

    # -- sockets -------------------------------------------------------------------
    def udp(self, ns: str, addr: str, port: int) -> socket.socket:
        with in_netns(ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((addr, port))
        return sock

    def svm_socket(self) -> socket.socket:
        """A raw socket on the secondary's end of the forward link."""
        with in_netns(self.s):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            sock.bind(("eth0", 0))
        return sock

    def svm_udp(self, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
        """The frame the SVM would send for the PVM's UDP datagram (same addresses)."""
        frame = (Ether(src="52:54:00:00:00:02", dst="52:54:00:00:00:01")
                 / IP(src=PVM_IP, dst=dst, ttl=64) / UDP(sport=sport, dport=dport) / payload)
        return bytes(frame)


@contextmanager
def topology(bridged: bool) -> Iterator[Topo]:
    topo = Topo(f"colot-{secrets.token_hex(4)}", bridged)
    try:
        topo.build()
        yield topo
    finally:
        topo.destroy()


def recv_or_none(sock: socket.socket, timeout: float) -> bytes | None:
    sock.settimeout(timeout)
    try:
        return sock.recv(65535)
    except TimeoutError:
        return None
