"""``colo-proxy run qemu-socket`` against real QEMU peers.

The primary-host side is a real QEMU (``-M none``) with filter-redirectors on UDP
socket netdevs (colo_proxy/qemu/redirector.py), wired like docs/qemu.md:

* ``p``: a redirector (queue=tx, outdev) whose chardev is a QEMU *server*; the
  datapath connects to it as ``--primary-in``;
* ``s``: a redirector whose chardev is a QEMU *client* connecting to the
  datapath's ``--secondary-in ...,server`` (as the secondary host does);
* ``o``: a redirector (queue=rx, indev) reading the datapath's ``--outdev``
  from a QEMU server chardev and putting the frames on its netdev.

The test plays the Xen/VMM side of ``--notify-dev``.  Framing edge cases (L=0,
oversize, vnet_hdr_len echo) use a plain socket as the QEMU peer.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from qemu_harness.driver import OutdevReader
from qemu_harness.process import free_tcp_port
from qemu_harness.redirector import RedirectIn, RedirectorFeeder, RedirectOut
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from colo_proxy.cli import main
from colo_proxy.datapath.endpoints import Endpoint, parse_endpoint
from colo_proxy.errors import InputError
from colo_proxy.qemu import notify as msg
from colo_proxy.qemu.framing import encode

ROOT = Path(__file__).resolve().parents[2]


def udp_frame(payload: bytes, sport: int = 5353) -> bytes:
    return bytes(Ether(src="52:54:00:00:00:01", dst="52:54:00:00:00:02")
                 / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=sport, dport=5353) / payload)


def tcp_frame(seq: int, payload: bytes) -> bytes:
    return bytes(Ether(src="52:54:00:00:00:01", dst="52:54:00:00:00:02")
                 / IP(src="10.0.0.1", dst="10.0.0.2")
                 / TCP(sport=80, dport=40000, seq=seq, ack=1, flags="PA") / payload)


class Datapath:
    """A ``colo-proxy run qemu-socket`` child process with a log file."""

    def __init__(self, args: list[str]) -> None:
        fd, self.log_path = tempfile.mkstemp(prefix="colot-dp-", suffix=".log")
        cmd = [sys.executable, "-c", "from colo_proxy.cli import main; main()",
               "run", "qemu-socket", *args]
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fd,
                                         stderr=subprocess.STDOUT, cwd=ROOT)
        finally:
            os.close(fd)

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in datapath log:\n{self.log()}")
            time.sleep(0.02)

    def terminate(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.unlink(self.log_path)


@dataclass
class Rig:
    dp: Datapath
    feeder: RedirectorFeeder
    notify: socket.socket | None
    notify_reader: OutdevReader | None

    def ping_pong(self, primary: bytes, secondary: bytes) -> None:
        self.feeder.send("p", primary)
        self.feeder.send("s", secondary)


def _start_rig(extra: list[str], with_notify: bool = True, vnet: bool = False
               ) -> tuple[Datapath, RedirectorFeeder, socket.socket | None]:
    pin, sin, out, ntf = (free_tcp_port() for _ in range(4))
    args = ["--primary-in", f"tcp:127.0.0.1:{pin}",
            "--secondary-in", f"tcp:127.0.0.1:{sin},server",
            "--outdev", f"tcp:127.0.0.1:{out}", "--compare-timeout", "600000", *extra]
    if with_notify:
        args += ["--notify-dev", f"tcp:127.0.0.1:{ntf},server"]
    if vnet:
        args += ["--vnet-hdr", "all"]
    dp = Datapath(args)
    feeder: RedirectorFeeder | None = None
    notify: socket.socket | None = None
    try:
        dp.wait_log("secondary_in: listening")
        if with_notify:
            dp.wait_log("notify: listening")
        feeder = RedirectorFeeder([
            RedirectOut("p", f"host=127.0.0.1,port={pin},server=on,wait=off", vnet_hdr=vnet),
            RedirectOut("s", f"host=127.0.0.1,port={sin}", vnet_hdr=vnet),
            RedirectIn("o", f"host=127.0.0.1,port={out},server=on,wait=off", vnet_hdr=vnet),
        ]).start()
        feeder.wait_connected()
        dp.wait_log("primary_in: connected")
        dp.wait_log("outdev: connected")
        if with_notify:
            notify = socket.create_connection(("127.0.0.1", ntf), timeout=10)
            dp.wait_log("notify: connected")
    except BaseException:
        if notify is not None:
            notify.close()
        if feeder is not None:
            feeder.stop()
        dp.close()
        raise
    return dp, feeder, notify


RigFactory = Callable[..., Rig]
DirectFactory = Callable[[list[str]], tuple["Datapath", socket.socket, socket.socket,
                                            socket.socket]]


@pytest.fixture
def rig_factory() -> Iterator[RigFactory]:
    made: list[tuple[Datapath, RedirectorFeeder, socket.socket | None]] = []

    def make(extra: list[str] | None = None, with_notify: bool = True,
             vnet: bool = False) -> Rig:
        dp, feeder, notify = _start_rig(extra or [], with_notify, vnet)
        made.append((dp, feeder, notify))
        return Rig(dp, feeder, notify, OutdevReader(notify) if notify is not None else None)

    try:
        yield make
    finally:
        for dp, feeder, notify in made:
            if notify is not None:
                notify.close()
            dp.close()
            feeder.stop()


pytestmark = pytest.mark.qemu


def test_matched_pair_goes_out_through_real_redirectors(rig_factory: RigFactory) -> None:
    rig = rig_factory()
    frames = [udp_frame(f"hello {i}".encode()) for i in range(5)]
    for f in frames:
        rig.ping_pong(f, f)
    got = [rig.feeder.recv("o", 5.0) for _ in frames]
    assert got == frames
    assert rig.notify_reader is not None
    assert rig.notify_reader.settle(0.2) == []


def test_mismatch_sends_do_checkpoint_and_colo_checkpoint_flushes(rig_factory: RigFactory) -> None:
    rig = rig_factory()
    assert rig.notify is not None and rig.notify_reader is not None
    p, s = tcp_frame(1, b"primary answer"), tcp_frame(1, b"second answer!")
    rig.ping_pong(p, s)
    requests = rig.notify_reader.wait_for(1, 5.0)
    assert [f.payload for f in requests] == [msg.DO_CHECKPOINT]
    assert rig.feeder.recv("o", 0.3) is None
    rig.notify.sendall(msg.encode_message(msg.COLO_CHECKPOINT))
    assert rig.feeder.recv("o", 5.0) == p
    # After the checkpoint, matching traffic flows again without a request.
    p2 = tcp_frame(15, b"next")
    rig.ping_pong(p2, p2)
    assert rig.feeder.recv("o", 5.0) == p2
    assert len(rig.notify_reader.settle(0.2)) == 1


def test_proxy_init_is_answered(rig_factory: RigFactory) -> None:
    rig = rig_factory()
    assert rig.notify is not None and rig.notify_reader is not None
    rig.notify.sendall(msg.encode_message(msg.PROXY_INIT))
    (reply,) = rig.notify_reader.wait_for(1, 5.0)
    assert reply.payload == msg.PROXY_INIT_REPLY


def test_vnet_hdr_framing_through_real_redirectors(rig_factory: RigFactory) -> None:
    rig = rig_factory(vnet=True)
    f = udp_frame(b"with vnet words")
    rig.ping_pong(f, f)
    assert rig.feeder.recv("o", 5.0) == f


@pytest.mark.parametrize("policy", ["flush", "drop"])
def test_sigterm_with_held_frames(rig_factory: RigFactory, policy: str) -> None:
    rig = rig_factory(["--held-on-exit", policy])
    held = [tcp_frame(1, b"held one"), tcp_frame(9, b"held two")]
    for f in held:
        rig.feeder.send("p", f)
    # A matching pair behind them on the same streams: once it is out, the
    # datapath has read the held frames (SIGTERM does not read what is pending).
    sentinel = udp_frame(b"behind the held ones", sport=6000)
    rig.ping_pong(sentinel, sentinel)
    assert rig.feeder.recv("o", 10.0) == sentinel
    assert rig.feeder.recv("o", 0.3) is None
    assert rig.dp.terminate() == 0
    if policy == "flush":
        assert [rig.feeder.recv("o", 5.0) for _ in held] == held
        assert "exit: released 2 held primary frames to outdev" in rig.dp.log()
    else:
        assert rig.feeder.recv("o", 0.5) is None
        assert "exit: discarded 2 held primary" in rig.dp.log()


def test_on_checkpoint_hook_without_notify(rig_factory: RigFactory, tmp_path: Path) -> None:
    record = tmp_path / "hook.txt"
    hook = f'echo "$COLO_REASON|$COLO_CONNECTION" >> {record}'
    rig = rig_factory(["--checkpoint-cmd", hook], with_notify=False)
    p, s = udp_frame(b"primary"), udp_frame(b"other!!")
    rig.ping_pong(p, s)
    # Hook exit status 0 without --notify-dev means "checkpoint done": flush.
    assert rig.feeder.recv("o", 10.0) == p
    lines = record.read_text().splitlines()
    assert len(lines) == 1
    reason, conn = lines[0].split("|")
    assert reason == "payload-mismatch"
    assert "10.0.0.1:5353 -> 10.0.0.2:5353" in conn


# -- framing edge cases with a plain socket as the QEMU peer -------------------

@pytest.fixture
def direct() -> Iterator[DirectFactory]:
    """Datapath with every endpoint in server mode; the test connects as QEMU."""
    started: list[Datapath] = []
    socks: list[socket.socket] = []

    def make(extra: list[str]) -> tuple[Datapath, socket.socket, socket.socket, socket.socket]:
        pin, sin, out = (free_tcp_port() for _ in range(3))
        dp = Datapath(["--primary-in", f"tcp:127.0.0.1:{pin},server",
                       "--secondary-in", f"tcp:127.0.0.1:{sin},server",
                       "--outdev", f"tcp:127.0.0.1:{out},server", *extra])
        started.append(dp)
        dp.wait_log("qemu-socket datapath running")
        conns = []
        for port, name in ((out, "outdev"), (pin, "primary_in"), (sin, "secondary_in")):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(sock)
            conns.append(sock)
            dp.wait_log(f"{name}: connected")
        return dp, conns[1], conns[2], conns[0]

    try:
        yield make
    finally:
        for sock in socks:
            sock.close()
        for dp in started:
            dp.close()


def test_outdev_echoes_primary_vnet_hdr_len(direct: DirectFactory) -> None:
    _, pin, sin, out = direct(["--vnet-hdr", "all"])
    frame = bytes(12) + udp_frame(b"virtio")
    pin.sendall(encode(frame, 12))
    sin.sendall(encode(frame, 12))
    out.settimeout(5.0)
    data = b""
    while len(data) < 8 + len(frame):
        chunk = out.recv(4096)
        assert chunk
        data += chunk
    assert data == struct.pack(">II", len(frame), 12) + frame


def test_empty_frame_is_skipped_and_stream_recovers(direct: DirectFactory) -> None:
    dp, pin, sin, out = direct([])
    frame = udp_frame(b"after the empty one")
    pin.sendall(struct.pack(">I", 0) + encode(frame, None))
    sin.sendall(encode(frame, None))
    reader = OutdevReader(out)
    assert [f.payload for f in reader.wait_for(1, 5.0)] == [frame]
    assert "primary_in: empty frame (length 0) skipped" in dp.log()


def test_oversize_frame_closes_that_connection(direct: DirectFactory) -> None:
    dp, pin, _, _ = direct([])
    pin.sendall(struct.pack(">I", 70000) + b"x" * 100)
    pin.settimeout(5.0)
    assert pin.recv(10) == b""  # the datapath closed the stream, like QEMU does
    assert "primary_in: oversized frame: length word 70000" in dp.log()
    assert dp.proc.poll() is None


# -- option validation ------------------------------------------------------------

def test_missing_endpoints_is_one_line_input_error() -> None:
    result = CliRunner().invoke(main, ["run", "qemu-socket",
                                       "--primary-in", "tcp:127.0.0.1:1"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "colo-proxy: error: run qemu-socket needs --secondary-in, --outdev")


def test_same_endpoint_twice_is_rejected() -> None:
    result = CliRunner().invoke(main, ["run", "qemu-socket",
                                       "--primary-in", "tcp:127.0.0.1:9001,server",
                                       "--secondary-in", "tcp:127.0.0.1:9001",
                                       "--outdev", "unix:/tmp/colot-x.sock"])
    assert result.exit_code == 2
    assert "same endpoint tcp:127.0.0.1:9001" in result.output


@pytest.mark.parametrize("text,expected", [
    ("tcp:127.0.0.1:9001", Endpoint("tcp", "127.0.0.1", 9001, False)),
    ("tcp:[::1]:9001,server", Endpoint("tcp", "::1", 9001, True)),
    ("unix:/run/colo/p.sock,server=on", Endpoint("unix", "/run/colo/p.sock", 0, True)),
])
def test_parse_endpoint(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text,error", [
    ("127.0.0.1:9001", "unknown transport"), ("tcp:host", "missing port"),
    ("tcp:h:0", "bad port"), ("tcp:h:9001,listen", "unknown flag"), ("udp:h:1", "unknown"),
    ("tcp:[::1]9001", "expected tcp:[IPV6]:PORT"),
])
def test_parse_endpoint_errors(text: str, error: str) -> None:
    with pytest.raises(InputError, match=error.replace("[", r"\[").replace("]", r"\]")):
        parse_endpoint(text, "--x")
