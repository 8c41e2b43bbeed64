"""QEMU's standalone colo-compare (``-M none``), wired to loopback TCP sockets.

The command line is the one verified in docs/qemu.md (an iothread, four socket
chardevs in server mode, one ``colo-compare`` object).  The runner connects as a
client to outdev, primary_in, secondary_in and (optionally) notify_dev, and
returns from ``start`` only once QMP reports every chardev connected, so no frame
is written before colo-compare listens.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from types import TracebackType

from colo_proxy.errors import ColoError
from qemu_harness.process import QEMU_BINARY, QemuProcess, free_tcp_port

HOST = "127.0.0.1"


@dataclass(frozen=True)
class ColoCompareSpec:
    """colo-compare properties; None leaves QEMU's default."""

    vnet_hdr: bool = False
    notify: bool = True
    compare_timeout_ms: int | None = None
    expired_scan_cycle_ms: int | None = None
    max_queue_size: int | None = None


def colo_compare_args(spec: ColoCompareSpec, ports: dict[str, int]) -> list[str]:
    """QEMU arguments (after ``-M none ...``) for colo-compare on the given ports.

    ``ports`` maps the chardev ids ``pin``, ``sin``, ``out`` (and ``ntf`` when
    ``spec.notify``) to loopback TCP ports on which QEMU listens.
    """
    args = ["-object", "iothread,id=it"]
    ids = ["pin", "sin", "out"] + (["ntf"] if spec.notify else [])
    for cid in ids:
        args += ["-chardev", f"socket,id={cid},host={HOST},port={ports[cid]},server=on,wait=off"]
    props = "colo-compare,id=c,primary_in=pin,secondary_in=sin,outdev=out,iothread=it"
    if spec.notify:
        props += ",notify_dev=ntf"
    if spec.vnet_hdr:
        props += ",vnet_hdr_support=on"
    if spec.compare_timeout_ms is not None:
        props += f",compare_timeout={spec.compare_timeout_ms}"
    if spec.expired_scan_cycle_ms is not None:
        props += f",expired_scan_cycle={spec.expired_scan_cycle_ms}"
    if spec.max_queue_size is not None:
        props += f",max_queue_size={spec.max_queue_size}"
    return [*args, "-object", props]


class ColoCompareRunner:
    """One QEMU running colo-compare, plus connected client sockets.

    Attributes after ``start``: ``primary``, ``secondary``, ``outdev`` and
    ``notify`` (None without notify_dev) -- blocking TCP sockets.
    """

    def __init__(self, spec: ColoCompareSpec | None = None, binary: str = QEMU_BINARY) -> None:
        self.spec = spec or ColoCompareSpec()
        self.binary = binary
        self.qemu: QemuProcess | None = None
        self.primary: socket.socket
        self.secondary: socket.socket
        self.outdev: socket.socket
        self.notify: socket.socket | None = None
        self._socks: list[socket.socket] = []

    def start(self, attempts: int = 3) -> ColoCompareRunner:
        for attempt in range(attempts):
            ids = ["pin", "sin", "out"] + (["ntf"] if self.spec.notify else [])
            ports = {cid: free_tcp_port(HOST) for cid in ids}
            self.qemu = QemuProcess(colo_compare_args(self.spec, ports), binary=self.binary)
            try:
                self.qemu.start()
            except ColoError:
                in_use = "in use" in self.qemu.log()
                self.qemu.stop()
                if in_use and attempt + 1 < attempts:
                    continue
                raise
            except BaseException:
                self.qemu.stop()
                raise
            break
        try:
            self.outdev = self._connect(ports["out"])
            self.primary = self._connect(ports["pin"])
            self.secondary = self._connect(ports["sin"])
            if self.spec.notify:
                self.notify = self._connect(ports["ntf"])
            self._wait_connected(ids)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int:
        if self.qemu is None:
            raise ColoError("colo-compare is not running")
        return self.qemu.pid

    def cpu_seconds(self) -> float:
        if self.qemu is None:
            raise ColoError("colo-compare is not running")
        return self.qemu.cpu_seconds()

    def _connect(self, port: int) -> socket.socket:
        sock = socket.create_connection((HOST, port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socks.append(sock)
        return sock

    def _wait_connected(self, ids: list[str], timeout: float = 10.0) -> None:
        assert self.qemu is not None
        deadline = time.monotonic() + timeout
        while True:
            info = {c["label"]: c["filename"] for c in self.qemu.cmd("query-chardev")}
            if all(not info.get(cid, "disconnected").startswith("disconnected") for cid in ids):
                return
            if time.monotonic() > deadline:
                raise ColoError(f"colo-compare chardevs not connected: {info}")
            time.sleep(0.01)

    def stop(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks.clear()
        if self.qemu is not None:
            self.qemu.stop()

    def __enter__(self) -> ColoCompareRunner:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
