"""QEMU filter-redirector feeders without a guest: real redirectors on UDP netdevs.

A ``-M none`` QEMU has no NIC, but netdevs and netfilters still work once every
netdev has a peer.  Each port here is a ``-netdev socket,udp=...`` (one UDP
datagram = one Ethernet frame) joined to hub 0 by a hubport, with one
filter-redirector on it:

* ``RedirectOut``: frames sent *into* the UDP netdev (as a guest's NIC output
  would be) are taken by ``filter-redirector queue=tx,outdev=CHARDEV`` and
  written to the chardev, framed exactly as on a COLO primary host.
* ``RedirectIn``: frames read from the chardev by ``filter-redirector
  queue=rx,indev=CHARDEV`` are injected into the netdev and come out of its UDP
  socket (as they would go out of the primary's tap).

``chardev`` is the QEMU chardev backend spec after ``socket,id=...,``, e.g.
``host=127.0.0.1,port=9001,server=on,wait=off`` (QEMU listens) or
``host=127.0.0.1,port=9004`` (QEMU connects at startup; the peer must already
listen) or ``path=/run/x.sock,server=on,wait=off``.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from types import TracebackType

from colo_proxy.errors import ColoError
from qemu_harness.process import QEMU_BINARY, QemuProcess, free_udp_port

HOST = "127.0.0.1"


@dataclass(frozen=True)
class RedirectOut:
    name: str
    chardev: str
    vnet_hdr: bool = False


@dataclass(frozen=True)
class RedirectIn:
    name: str
    chardev: str
    vnet_hdr: bool = False


Redirect = RedirectOut | RedirectIn


def redirector_args(ports: list[Redirect], udp: dict[str, tuple[int, int]]) -> list[str]:
    """QEMU arguments for the ports; ``udp[name] = (qemu_port, peer_port)``."""
    args: list[str] = []
    for i, port in enumerate(ports):
        qport, peer = udp[port.name]
        nd, cd = f"nd{i}", f"cd{i}"
        args += ["-netdev", f"socket,id={nd},udp={HOST}:{peer},localaddr={HOST}:{qport}",
                 "-netdev", f"hubport,id=hp{i},hubid=0,netdev={nd}",
                 "-chardev", f"socket,id={cd},{port.chardev}"]
        vnet = ",vnet_hdr_support=on" if port.vnet_hdr else ""
        if isinstance(port, RedirectOut):
            args += ["-object", f"filter-redirector,id=r{i},netdev={nd},queue=tx,outdev={cd}{vnet}"]
        else:
            args += ["-object", f"filter-redirector,id=r{i},netdev={nd},queue=rx,indev={cd}{vnet}"]
    return args


class RedirectorFeeder:
    """One QEMU with filter-redirectors; ``send``/``recv`` frames on their netdevs."""

    def __init__(self, ports: list[Redirect], binary: str = QEMU_BINARY,
                 extra_args: list[str] | None = None) -> None:
        names = [p.name for p in ports]
        if len(set(names)) != len(names):
            raise ColoError(f"duplicate redirector port names: {names}")
        self.ports = {p.name: p for p in ports}
        self.binary = binary
        self.extra_args = list(extra_args or [])
        """More QEMU arguments, e.g. ``-object tls-creds-x509,...`` for TLS chardevs."""
        self.qemu: QemuProcess | None = None
        self._udp: dict[str, socket.socket] = {}
        self._qemu_addr: dict[str, tuple[str, int]] = {}

    def start(self) -> RedirectorFeeder:
        udp: dict[str, tuple[int, int]] = {}
        try:
            for name in self.ports:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._udp[name] = sock
                sock.bind((HOST, 0))
                qport = free_udp_port(HOST)
                udp[name] = (qport, sock.getsockname()[1])
                self._qemu_addr[name] = (HOST, qport)
            self.qemu = QemuProcess([*self.extra_args,
                                     *redirector_args(list(self.ports.values()), udp)],
                                    binary=self.binary)
            self.qemu.start()
        except BaseException:
            self.stop()
            raise
        return self

    def chardev_connected(self, name: str) -> bool:
        """Whether the chardev of port ``name`` has a connected peer (QMP query-chardev)."""
        if self.qemu is None:
            raise ColoError("feeder is not running")
        cid = f"cd{list(self.ports).index(name)}"
        for info in self.qemu.cmd("query-chardev"):
            if info["label"] == cid:
                return not str(info["filename"]).startswith("disconnected")
        return False

    def wait_connected(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.chardev_connected(n) for n in self.ports):
            if time.monotonic() > deadline:
                raise ColoError("redirector chardevs not connected in time")
            time.sleep(0.02)

    def send(self, name: str, frame: bytes) -> None:
        """Hand ``frame`` to the netdev of port ``name`` (as if a guest sent it)."""
        self._udp[name].sendto(frame, self._qemu_addr[name])

    def recv(self, name: str, timeout: float) -> bytes | None:
        """The next frame that left the netdev of port ``name``, or None after ``timeout``."""
        sock = self._udp[name]
        sock.settimeout(timeout)
        try:
            data, _ = sock.recvfrom(70000)
        except TimeoutError:
            return None
        return data

    def stop(self) -> None:
        if self.qemu is not None:
            self.qemu.stop()
        for sock in self._udp.values():
            sock.close()
        self._udp.clear()

    def __enter__(self) -> RedirectorFeeder:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
