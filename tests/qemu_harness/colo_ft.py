"""The guestless COLO topology: real TCP stacks behind QEMU's real COLO-FT filter set.

No guest runs. Three network namespaces stand in for the machines:

* ``<prefix>-c``, the **client**;
* ``<prefix>-p``, the **PVM**;
* ``<prefix>-s``, the **SVM**.

The PVM and the SVM have the same IP and MAC address and run the same service.
Two ``-M none`` QEMUs carry the filters of docs/COLO-FT.txt on hub ports, with taps
where a guest NIC and the host's tap would be:

```
 client ns                primary QEMU (-M none)                      PVM ns
 [tap pc] <-> hn0=tap pc -- hub 0 -- g0=tap pg <-> [tap pg]
              filters on hn0:
                filter-mirror m0 queue=tx outdev=mirror0 ------------+ client frames
                filter-redirector redire0 queue=rx indev=compare_out | (to the SVM)
                filter-redirector redire1 queue=rx outdev=compare0   |
                                                                     |
              secondary QEMU (-M none)                               |     SVM ns
              hn0=udp (unused) -- hub 0 -- g0=tap sg <-> [tap sg]    |
              filters on hn0:                                        |
                filter-redirector f1 queue=tx indev=red0 <-----------+
                filter-redirector f2 queue=rx outdev=red1 --> secondary_in
                filter-rewriter rew0 queue=all
```

Why the filters sit on ``hn0``: frames that ``hn0``'s backend reads (the client's, or
the mirrored ones injected by f1) pass its filters in the tx direction, and frames
the hub delivers from the guest tap pass them in the rx direction. That is the
orientation QEMU's filters have on a real host's netdev, where the guest NIC is the
peer. filter-rewriter tells the two directions apart by the sender (the netdev
itself means "towards the guest"), so it sees both with ``queue=all``, as on a real
secondary. The secondary's ``hn0`` backend is a UDP socket nobody listens to: f2
takes every frame the SVM sends, and nothing arrives on it.

The comparison runs in one of two ways:

* ``compare="colo-proxy"``: ``colo-proxy run ... qemu-socket`` connects to
  ``compare0``/``compare_out`` and listens for the secondary's ``red1``;
* ``compare="colo-compare"``: QEMU's own ``-object colo-compare`` in the primary QEMU,
  wired as in COLO-FT.txt (for side-by-side runs).

Both use the notify_dev protocol. The harness plays the VMM: it answers every
``DO_CHECKPOINT`` with ``COLO_CHECKPOINT`` (the checkpoint is "done" at once, so
whatever is held gets flushed) and counts the requests in ``checkpoints``.

Nothing restores the SVM at a checkpoint. After a real divergence both stacks go on
with their own state, as two real VMs would until the next checkpoint copied one onto
the other.

Use it as a context manager. ``client(func)`` runs ``func`` in a thread inside the
client namespace; sockets it opens belong to that namespace.

More services (``ColoFtSpec.extra_services``) run next to the HTTP one in both guest
namespaces; ``echo_service()`` is a deterministic TCP and UDP echo for them
(``python -m qemu_harness.colo_ft echo``). With ``ColoFtSpec.events`` colo-proxy
writes its JSON event stream (docs/datapaths.md, "Event stream") to ``events_path``,
and ``proxy_events()`` reads it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from pyroute2 import IPRoute

from colo_proxy.errors import ColoError
from colo_proxy.qemu import notify as msg
from colo_proxy.qemu.framing import FrameDecoder
from colo_proxy.topology import netns
from qemu_harness.process import QemuProcess, free_tcp_port, free_udp_port

HOST = "127.0.0.1"
T = TypeVar("T")
NUD_PERMANENT = 0x80

COLO_PROXY = [sys.executable, "-c", "import sys; from colo_proxy.cli import main; sys.exit(main())"]
"""The CLI, run by this interpreter (the virtualenv's, with the package installed)."""


@dataclass(frozen=True)
class ColoFtSpec:
    """What the topology runs."""

    compare: str = "colo-proxy"
    """``colo-proxy`` or ``colo-compare`` (QEMU's)."""
    service: tuple[str, ...] = (sys.executable, "-m", "colo_proxy.demo.httpd", "--port", "80")
    """Started in the PVM and the SVM namespaces; must print a line starting with
    ``listening`` once it accepts connections."""
    server_ip: str = "10.78.0.1"
    client_ip: str = "10.78.0.2"
    guest_mac: str = "52:54:00:78:00:01"
    client_mac: str = "52:54:00:78:00:02"
    compare_timeout_ms: int = 3000
    proxy_args: tuple[str, ...] = ()
    """Extra options for ``colo-proxy run`` (engine options)."""
    guest_sysctls: tuple[tuple[str, str], ...] = (("net.ipv4.tcp_timestamps", "0"),)
    """Written in the PVM and SVM namespaces.  TCP timestamps are off by default:
    filter-rewriter does not rewrite them, so the client echoes the PVM's TSval to the
    SVM, and Linux 6.x drops a handshake ACK whose TSecr is not one of the TSvals its
    own SYN-ACKs carried (``tcp_check_req``).  When the two stacks' clocks differ by a
    millisecond at the SYN-ACK, the SVM's connection never leaves SYN-RECV (seen here:
    the SVM answered the ACK with a bare ACK, then with RSTs)."""
    extra_services: tuple[tuple[str, ...], ...] = ()
    """More services, each started in the PVM and the SVM namespaces after ``service``,
    with the same readiness rule (e.g. ``echo_service()``)."""
    events: bool = False
    """colo-proxy only: ``--events`` to ``GuestlessColo.events_path`` (read it with
    ``proxy_events()``); add ``--stats-interval`` through ``proxy_args``."""


ECHO_TCP_PORT = 7
ECHO_UDP_PORT = 7


def echo_service(tcp_port: int = ECHO_TCP_PORT,
                 udp_port: int = ECHO_UDP_PORT) -> tuple[str, ...]:
    """The argv of a deterministic TCP and UDP echo service (``serve_echo``)."""
    return (sys.executable, "-m", "qemu_harness.colo_ft", "echo",
            "--tcp", str(tcp_port), "--udp", str(udp_port))


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := sock.recv(65536):
            sock.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve_echo(tcp_port: int, udp_port: int) -> None:
    """Echo every TCP byte and every UDP datagram back, as received (one send per
    receive), until SIGTERM; prints ``listening ...`` once both sockets are bound."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    server = _EchoServer(("0.0.0.0", tcp_port), _EchoHandler)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    udp.bind(("0.0.0.0", udp_port))

    def udp_echo() -> None:
        while True:
            data, peer = udp.recvfrom(65536)
            udp.sendto(data, peer)

    threading.Thread(target=udp_echo, daemon=True).start()
    print(f"listening tcp:{tcp_port} udp:{udp_port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        udp.close()


def colo_proxy_run_argv() -> list[str]:
    """``colo-proxy run`` for the qemu-socket datapath, in whichever form the CLI has:
    ``run qemu-socket`` (subcommands) or ``run --datapath qemu-socket``."""
    probe = subprocess.run([*COLO_PROXY, "run", "--help"], capture_output=True, check=False)
    if b"--datapath" in probe.stdout:
        return [*COLO_PROXY, "run", "--datapath", "qemu-socket"]
    return [*COLO_PROXY, "run", "qemu-socket"]


def _tap(name: str, ifname: str) -> list[str]:
    return ["-netdev", f"tap,id={name},ifname={ifname},script=no,downscript=no,"
                       "vhost=off,vnet_hdr=off"]


class GuestlessColo:
    """The topology above; ``start``/``stop`` or a ``with`` block."""

    def __init__(self, prefix: str, spec: ColoFtSpec | None = None) -> None:
        if len(prefix) > 10 or not prefix.replace("-", "").isalnum():
            raise ColoError(f"prefix {prefix!r}: at most 10 letters, digits or '-'")
        if (spec or ColoFtSpec()).compare not in ("colo-proxy", "colo-compare"):
            raise ColoError("compare must be 'colo-proxy' or 'colo-compare'")
        self.prefix = prefix
        self.spec = spec or ColoFtSpec()
        self.ns_client, self.ns_pvm, self.ns_svm = (f"{prefix}-c", f"{prefix}-p", f"{prefix}-s")
        self.taps = {"pc": f"{prefix}pc", "pg": f"{prefix}pg", "sg": f"{prefix}sg"}
        self.primary: QemuProcess | None = None
        self.secondary: QemuProcess | None = None
        self.proxy: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix=f"colo-ft-{prefix}-"))
        self.proxy_log = self._dir / "colo-proxy.log"
        """colo-proxy's output; removed by ``stop`` (read it with ``proxy_output`` first)."""
        self.events_path = self._dir / "colo-proxy-events.jsonl"
        """colo-proxy's ``--events`` output when ``spec.events`` is set; removed by
        ``stop`` like the log (read it with ``proxy_events`` first)."""
        self.services: list[subprocess.Popen[bytes]] = []
        self.checkpoints = 0
        """DO_CHECKPOINT messages received on notify_dev."""
        self._lock = threading.Lock()
        self._notify: socket.socket | None = None
        self._notify_thread: threading.Thread | None = None
        self._stopping = False
        self._made_ns: list[str] = []

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> GuestlessColo:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        for name in (self.ns_client, self.ns_pvm, self.ns_svm):
            if netns.exists(name):
                raise ColoError(f"network namespace {name} exists (another run?)")
            netns.create(name)
            self._made_ns.append(name)
        ports = {k: free_tcp_port(HOST) for k in ("mirror", "pin", "sin", "out", "ntf")}
        qemu_compare = self.spec.compare == "colo-compare"
        if not qemu_compare:
            self._start_proxy(ports)
        self.primary = QemuProcess(self._primary_args(ports, qemu_compare)).start()
        self.secondary = QemuProcess(self._secondary_args(ports)).start()
        self._wire_namespaces()
        self._connect_notify(ports["ntf"])
        self._wait_chardevs()
        for service in (self.spec.service, *self.spec.extra_services):
            for ns in (self.ns_pvm, self.ns_svm):
                self._start_service(ns, service=service)

    def _start_proxy(self, ports: dict[str, int]) -> None:
        argv = [*colo_proxy_run_argv(),
                "--primary-in", f"tcp:{HOST}:{ports['pin']}",
                "--outdev", f"tcp:{HOST}:{ports['out']}",
                "--secondary-in", f"tcp:{HOST}:{ports['sin']},server",
                "--notify-dev", f"tcp:{HOST}:{ports['ntf']},server",
                "--compare-timeout", str(self.spec.compare_timeout_ms),
                *self.spec.proxy_args]
        if self.spec.events:
            self.events_path.unlink(missing_ok=True)
            argv += ["--events", str(self.events_path)]
        with open(self.proxy_log, "wb") as log:
            self.proxy = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT)
        # The secondary QEMU's red1 connects once, at startup: wait for the listener.
        self._wait_listening(ports["sin"], "colo-proxy secondary_in")

    def _primary_args(self, ports: dict[str, int], qemu_compare: bool) -> list[str]:
        args = [*_tap("hn0", self.taps["pc"]), "-netdev", "hubport,id=hp0,hubid=0,netdev=hn0",
                *_tap("g0", self.taps["pg"]), "-netdev", "hubport,id=hp1,hubid=0,netdev=g0",
                "-chardev", f"socket,id=mirror0,host={HOST},port={ports['mirror']},"
                            "server=on,wait=off",
                "-chardev", f"socket,id=compare0,host={HOST},port={ports['pin']},"
                            "server=on,wait=off",
                "-chardev", f"socket,id=compare_out,host={HOST},port={ports['out']},"
                            "server=on,wait=off"]
        if qemu_compare:
            args += ["-chardev", f"socket,id=compare1,host={HOST},port={ports['sin']},"
                                 "server=on,wait=off",
                     "-chardev", f"socket,id=compare0-0,host={HOST},port={ports['pin']}",
                     "-chardev", f"socket,id=compare_out0,host={HOST},port={ports['out']}",
                     "-chardev", f"socket,id=ntf,host={HOST},port={ports['ntf']},"
                                 "server=on,wait=off"]
        args += ["-object", "filter-mirror,id=m0,netdev=hn0,queue=tx,outdev=mirror0",
                 "-object", "filter-redirector,id=redire0,netdev=hn0,queue=rx,indev=compare_out",
                 "-object", "filter-redirector,id=redire1,netdev=hn0,queue=rx,outdev=compare0"]
        if qemu_compare:
            args += ["-object", "iothread,id=it",
                     "-object", "colo-compare,id=comp0,primary_in=compare0-0,"
                                "secondary_in=compare1,outdev=compare_out0,iothread=it,"
                                f"notify_dev=ntf,compare_timeout={self.spec.compare_timeout_ms}"]
        return args

    def _secondary_args(self, ports: dict[str, int]) -> list[str]:
        dead, local = free_udp_port(HOST), free_udp_port(HOST)
        return ["-netdev", f"socket,id=hn0,udp={HOST}:{dead},localaddr={HOST}:{local}",
                "-netdev", "hubport,id=hp0,hubid=0,netdev=hn0",
                *_tap("g0", self.taps["sg"]), "-netdev", "hubport,id=hp1,hubid=0,netdev=g0",
                "-chardev", f"socket,id=red0,host={HOST},port={ports['mirror']},reconnect=1",
                "-chardev", f"socket,id=red1,host={HOST},port={ports['sin']},reconnect=1",
                "-object", "filter-redirector,id=f1,netdev=hn0,queue=tx,indev=red0",
                "-object", "filter-redirector,id=f2,netdev=hn0,queue=rx,outdev=red1",
                "-object", "filter-rewriter,id=rew0,netdev=hn0,queue=all"]

    def _wire_namespaces(self) -> None:
        s = self.spec
        plan = [(self.taps["pc"], self.ns_client, s.client_ip, s.client_mac, s.server_ip,
                 s.guest_mac),
                (self.taps["pg"], self.ns_pvm, s.server_ip, s.guest_mac, s.client_ip,
                 s.client_mac),
                (self.taps["sg"], self.ns_svm, s.server_ip, s.guest_mac, s.client_ip,
                 s.client_mac)]
        with IPRoute() as ip:
            for tap, ns, *_ in plan:
                links = ip.link_lookup(ifname=tap)
                if not links:
                    raise ColoError(f"QEMU did not create tap {tap}")
                ip.link("set", index=links[0], net_ns_fd=ns)
        for tap, ns, addr, mac, peer_ip, peer_mac in plan:
            sysctls = {"net.ipv6.conf.all.disable_ipv6": "1",
                       "net.ipv6.conf.default.disable_ipv6": "1"}
            if ns != self.ns_client:
                sysctls.update(s.guest_sysctls)
            netns.write_sysctls(ns, sysctls)
            with IPRoute(netns=ns) as ip:
                index = ip.link_lookup(ifname=tap)[0]
                ip.link("set", index=index, address=mac)
                ip.addr("add", index=index, address=addr, prefixlen=24)
                ip.link("set", index=index, state="up")
                ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")
                # Static neighbours: no ARP through the filters (it would pass
                # uncompared anyway), nothing timing-dependent.
                ip.neigh("add", dst=peer_ip, lladdr=peer_mac, ifindex=index,
                         state=NUD_PERMANENT)

    def _wait_listening(self, port: int, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proxy is not None and self.proxy.poll() is not None:
                raise ColoError(f"colo-proxy exited ({self.proxy.returncode}): "
                                f"{self.proxy_log.read_text(errors='replace')[-800:]}")
            with socket.socket() as probe, contextlib.suppress(OSError):
                probe.settimeout(0.5)
                probe.connect((HOST, port))
                # A server endpoint takes the newest connection: this probe goes away at
                # once and QEMU's own connection replaces it.
                return
            if time.monotonic() > deadline:
                raise ColoError(f"{what} not listening on port {port}")
            time.sleep(0.05)

    def _connect_notify(self, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket()
            try:
                sock.connect((HOST, port))
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise ColoError(f"notify_dev not listening on port {port}") from None
                time.sleep(0.05)
                continue
            break
        self._notify = sock
        self._notify_thread = threading.Thread(target=self._vmm, name="colo-ft-vmm",
                                               daemon=True)
        self._notify_thread.start()

    def _vmm(self) -> None:
        """Answer each DO_CHECKPOINT with COLO_CHECKPOINT; count them."""
        sock = self._notify
        assert sock is not None
        decoder = FrameDecoder(False)
        while not self._stopping:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            for frame in decoder.feed(data):
                if frame.payload == msg.DO_CHECKPOINT:
                    with self._lock:
                        self.checkpoints += 1
                    with contextlib.suppress(OSError):
                        sock.sendall(msg.encode_message(msg.COLO_CHECKPOINT))

    def _wait_chardevs(self, timeout: float = 20.0) -> None:
        assert self.primary is not None and self.secondary is not None
        deadline = time.monotonic() + timeout
        while True:
            waiting = [f"{name}:{info['label']}"
                       for name, q in (("primary", self.primary), ("secondary", self.secondary))
                       for info in q.cmd("query-chardev")
                       if str(info["filename"]).startswith("disconnected")]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise ColoError(f"chardevs not connected: {waiting}")
            time.sleep(0.05)

    def _start_service(self, ns: str, timeout: float = 20.0,
                       service: tuple[str, ...] | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        argv = service if service is not None else self.spec.service
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env)
        self.services.append(proc)
        out = proc.stdout
        assert out is not None
        ready: list[bytes] = []
        reader = threading.Thread(target=lambda: ready.append(out.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not ready or not ready[0].startswith(b"listening"):
            raise ColoError(f"service in {ns} did not start: {ready!r}")

    def client(self, func: Callable[[], T]) -> T:
        """Run ``func`` inside the client namespace (in a thread) and return its result."""
        return netns.run_in(self.ns_client, func)

    def proxy_output(self) -> str:
        """colo-proxy's log so far ("" with colo-compare)."""
        if self.spec.compare != "colo-proxy":
            return ""
        try:
            return self.proxy_log.read_text(errors="replace")
        except OSError:
            return ""

    def proxy_events(self) -> list[dict[str, Any]]:
        """colo-proxy's events so far, in order ([] with colo-compare or without
        ``spec.events``).  A last line still being written is left out."""
        if self.spec.compare != "colo-proxy" or not self.spec.events:
            return []
        try:
            text = self.events_path.read_text(errors="replace")
        except OSError:
            return []
        events = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        return events

    def stop(self) -> None:
        """Stop everything started, in reverse order; safe to call more than once."""
        self._stopping = True
        for proc in self.services:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self.services.clear()
        if self.proxy is not None:
            if self.proxy.poll() is None:
                self.proxy.send_signal(signal.SIGTERM)
                try:
                    self.proxy.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proxy.kill()
                    self.proxy.wait()
            self.proxy = None
        if self._notify is not None:
            with contextlib.suppress(OSError):
                self._notify.shutdown(socket.SHUT_RDWR)
            self._notify.close()
            self._notify = None
        if self._notify_thread is not None:
            self._notify_thread.join(5)
            self._notify_thread = None
        for q in (self.secondary, self.primary):
            if q is not None:
                q.stop()
        self.secondary = self.primary = None
        for name in reversed(self._made_ns):
            netns.remove(name)
        self._made_ns.clear()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> GuestlessColo:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="services for the guestless COLO topology")
    sub = parser.add_subparsers(dest="service", required=True)
    echo = sub.add_parser("echo", help="TCP and UDP echo (serve_echo)")
    echo.add_argument("--tcp", type=int, default=ECHO_TCP_PORT)
    echo.add_argument("--udp", type=int, default=ECHO_UDP_PORT)
    args = parser.parse_args(argv)
    serve_echo(args.tcp, args.udp)


if __name__ == "__main__":
    _main()
