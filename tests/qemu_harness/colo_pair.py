"""A real KVM COLO pair on loopback: a primary and a secondary QEMU, BIOS only.

Debian's QEMU 7.2 hangs in COLO under TCG (docs/operations.md, "Testing"), so the
pair needs a usable /dev/kvm: :func:`kvm_unusable` says why not, for a skip.
Each VM is ``-M pc -accel kvm -m 64`` with no disk and no guest OS; its e1000 has
no option ROM (``romfile=``), so SeaBIOS sends nothing on the network and every
STOP/RESUME pair is a checkpoint.  Each QEMU has two monitors: the harness's and
one for the agent (``agent_qmp``), as docs/operations.md deploys it.

Network objects (docs/COLO-FT.txt, colo-proxy in place of colo-compare):

* primary: ``filter-mirror`` m0 (queue=tx, outdev=mirror0, a server chardev the
  secondary connects to), ``filter-redirector`` redire0 (queue=rx,
  indev=compare_out) and redire1 (queue=rx, outdev=compare0), both server
  chardevs for the datapath's ``outdev`` and ``primary_in``;
* secondary: ``filter-redirector`` f1 (queue=tx, indev=red0 -> primary mirror0),
  f2 (queue=rx, outdev=red1 -> the datapath's ``secondary_in``), and
  ``filter-rewriter`` rew0.

``secondary_in`` must be listening before the secondary starts (a client
chardev connects once, at start-up): pass its address, or the harness opens a
sink that accepts and discards.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from types import TracebackType
from typing import Any

from colo_proxy.errors import ColoError
from qemu_harness.process import QemuProcess, free_tcp_port, free_udp_port

KVM_GET_API_VERSION = 0xAE00


def kvm_unusable() -> str | None:
    """None if /dev/kvm can run a VM here, else the reason."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/kvm is not usable: {exc.strerror}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return f"/dev/kvm: KVM_GET_API_VERSION failed: {exc.strerror}"
    finally:
        os.close(fd)
    if version != 12:
        return f"/dev/kvm: unexpected KVM API version {version}"
    return None


class PairVm(QemuProcess):
    """A ``-M pc`` KVM QEMU with a second monitor for the agent."""

    def __init__(self, args: list[str]) -> None:
        super().__init__(args)
        self.agent_qmp = os.path.join(self._dir, "agent.qmp")

    def command_line(self) -> list[str]:
        return [self.binary, "-M", "pc", "-accel", "kvm", "-m", "64", "-nodefaults",
                "-display", "none", "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                "-chardev", f"socket,id=qmp-agent,path={self.agent_qmp},server=on,wait=off",
                "-mon", "chardev=qmp-agent,mode=control", *self.args]

    def events(self, wait: float = 0.0) -> list[dict[str, Any]]:
        """Events on the harness's monitor: those already queued, or the first within
        ``wait`` seconds and everything queued with it."""
        out: list[dict[str, Any]] = []
        if wait:
            with contextlib.suppress(TimeoutError):
                out.append(self.qmp.pull_event(wait=wait))
        out.extend(self.qmp.get_events())
        self.qmp.clear_events()
        return out


class _Sink:
    """Accepts connections and discards what they send (a stand-in secondary_in)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port: int = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._conns: list[socket.socket] = []
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass

    def close(self) -> None:
        self.sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()


class ColoPair:
    """Start with ``with ColoPair(...) as pair:``; ``enter_colo()`` migrates into COLO."""

    def __init__(self, *, checkpoint_delay_ms: int = 20000,
                 secondary_in: tuple[str, int] | None = None) -> None:
        self.checkpoint_delay_ms = checkpoint_delay_ms
        self.migrate_port = free_tcp_port()
        self.mirror_port = free_tcp_port()
        self.primary_in_port = free_tcp_port()
        self.outdev_port = free_tcp_port()
        self._sink = _Sink() if secondary_in is None else None
        self.secondary_in = secondary_in or ("127.0.0.1", self._sink.port if self._sink else 0)
        p_udp, p_peer, s_udp, s_peer = (free_udp_port() for _ in range(4))
        self.primary = PairVm([
            "-netdev", f"socket,id=hn0,udp=127.0.0.1:{p_peer},localaddr=127.0.0.1:{p_udp}",
            "-device", "e1000,id=e0,netdev=hn0,romfile=,mac=52:a4:00:12:78:66",
            "-chardev", f"socket,id=mirror0,host=127.0.0.1,port={self.mirror_port},"
                        "server=on,wait=off",
            "-chardev", f"socket,id=compare0,host=127.0.0.1,port={self.primary_in_port},"
                        "server=on,wait=off",
            "-chardev", f"socket,id=compare_out,host=127.0.0.1,port={self.outdev_port},"
                        "server=on,wait=off",
            "-object", "filter-mirror,id=m0,netdev=hn0,queue=tx,outdev=mirror0",
            "-object", "filter-redirector,netdev=hn0,id=redire0,queue=rx,indev=compare_out",
            "-object", "filter-redirector,netdev=hn0,id=redire1,queue=rx,outdev=compare0",
        ])
        host, port = self.secondary_in
        self.secondary = PairVm([
            "-netdev", f"socket,id=hn0,udp=127.0.0.1:{s_peer},localaddr=127.0.0.1:{s_udp}",
            "-device", "e1000,id=e0,netdev=hn0,romfile=,mac=52:a4:00:12:78:66",
            "-chardev", f"socket,id=red0,host=127.0.0.1,port={self.mirror_port}",
            "-chardev", f"socket,id=red1,host={host},port={port}",
            "-object", "filter-redirector,id=f1,netdev=hn0,queue=tx,indev=red0",
            "-object", "filter-redirector,id=f2,netdev=hn0,queue=rx,outdev=red1",
            "-object", "filter-rewriter,id=rew0,netdev=hn0,queue=all",
            "-incoming", f"tcp:127.0.0.1:{self.migrate_port}",
        ])
        self.redirectors = ("f1", "f2")

    def start(self) -> ColoPair:
        try:
            self.primary.start()
            self.secondary.start()
        except BaseException:
            self.stop()
            raise
        return self

    def enter_colo(self, timeout: float = 120.0) -> None:
        """x-colo on both, x-checkpoint-delay, migrate; returns once both are in COLO
        (the COLO-entry STOP/RESUME of the primary already consumed)."""
        for vm in (self.secondary, self.primary):
            vm.cmd("migrate-set-capabilities",
                   capabilities=[{"capability": "x-colo", "state": True}])
        self.primary.cmd("migrate-set-parameters",
                         **{"x-checkpoint-delay": self.checkpoint_delay_ms})
        self.primary.cmd("migrate", uri=f"tcp:127.0.0.1:{self.migrate_port}")
        deadline = time.monotonic() + timeout
        while True:
            status = self.primary.cmd("query-migrate").get("status")
            modes = (self.primary.cmd("query-colo-status")["mode"],
                     self.secondary.cmd("query-colo-status")["mode"])
            if status == "colo" and modes == ("primary", "secondary"):
                break
            if status in ("failed", "completed", "cancelled"):
                raise ColoError(f"migration ended in {status!r} instead of COLO")
            if time.monotonic() > deadline:
                raise ColoError(f"not in COLO after {timeout} s: {status}, {modes}")
            time.sleep(0.05)

    def stop(self) -> None:
        for vm in (self.primary, self.secondary):
            vm.stop()
        if self._sink is not None:
            self._sink.close()

    def __enter__(self) -> ColoPair:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
