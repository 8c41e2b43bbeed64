"""Server endpoints serve one client at a time; bind warnings; unix socket modes.

The takeover of issue 12, against real QEMU filter-redirectors: the real
secondary (a QEMU client chardev) connects to ``--secondary-in ...,server``, a
second client connects, and the primary and the real secondary then send the
matching frames.  Before, the second client silently replaced the real
secondary's stream; now it is refused, the real stream keeps feeding the
comparison, and the intruder's frames change nothing.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from qemu_harness.process import free_tcp_port
from qemu_harness.redirector import RedirectIn, RedirectorFeeder, RedirectOut
from qemu_harness.tls import make_pki
from test_qemu_socket_datapath import ROOT, Datapath, udp_frame

from colo_proxy.cli import main
from colo_proxy.qemu.framing import encode


def _run_qemu_socket() -> list[str]:
    """The CLI words that start the datapath (``run qemu-socket`` once it is a sub-command)."""
    run = main.commands["run"] if isinstance(main, click.Group) else None
    if isinstance(run, click.Group) and "qemu-socket" in run.commands:
        return ["run", "qemu-socket"]
    return ["run", "--datapath", "qemu-socket"]


def _closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    """True once the peer has closed (EOF or reset); False if data or nothing came."""
    sock.settimeout(timeout)
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.fixture
def primary_rig() -> Iterator[tuple[Datapath, RedirectorFeeder, int]]:
    """Datapath + QEMU redirectors wired like a primary host; yields the secondary-in port."""
    pin, sin, out = (free_tcp_port() for _ in range(3))
    dp = Datapath(["--primary-in", f"tcp:127.0.0.1:{pin}",
                   "--secondary-in", f"tcp:127.0.0.1:{sin},server",
                   "--outdev", f"tcp:127.0.0.1:{out}", "--compare-timeout", "600000"])
    feeder: RedirectorFeeder | None = None
    try:
        dp.wait_log("secondary_in: listening")
        feeder = RedirectorFeeder([
            RedirectOut("p", f"host=127.0.0.1,port={pin},server=on,wait=off"),
            RedirectOut("s", f"host=127.0.0.1,port={sin}"),
            RedirectIn("o", f"host=127.0.0.1,port={out},server=on,wait=off"),
        ]).start()
        feeder.wait_connected()
        for name in ("primary_in", "secondary_in", "outdev"):
            dp.wait_log(f"{name}: connected")
        yield dp, feeder, sin
    finally:
        if feeder is not None:
            feeder.stop()
        dp.close()


@pytest.mark.qemu
def test_second_client_cannot_take_over_secondary_in(
        primary_rig: tuple[Datapath, RedirectorFeeder, int]) -> None:
    dp, feeder, sin = primary_rig
    # 1. the real secondary is connected (fixture); 2. a second client connects.
    intruder = socket.create_connection(("127.0.0.1", sin), timeout=10)
    try:
        dp.wait_log("secondary_in: refused connection from 127.0.0.1:")
        assert "already connected to" in dp.log()
        assert _closed_by_peer(intruder)
    finally:
        intruder.close()
    # 3. the primary and the real secondary send the matching frame: released.
    frame = udp_frame(b"after the intruder")
    feeder.send("p", frame)
    feeder.send("s", frame)
    assert feeder.recv("o", 5.0) == frame
    assert feeder.chardev_connected("s")
    # The intruder's frames change nothing: its copy does not release the primary's.
    forged = udp_frame(b"forged by the intruder", sport=6000)
    with socket.create_connection(("127.0.0.1", sin), timeout=10) as intruder2:
        with contextlib.suppress(OSError):
            intruder2.sendall(encode(forged, None) * 3)
        assert _closed_by_peer(intruder2)
    feeder.send("p", forged)
    assert feeder.recv("o", 0.5) is None
    feeder.send("s", forged)
    assert feeder.recv("o", 5.0) == forged
    assert dp.terminate() == 0
    log = dp.log()
    assert log.count("secondary_in: refused connection from") == 2
    assert "secondary_in: refused 2 connections (2 while connected, 0 TLS handshake" in log
    assert "replaces the previous one" not in log


@pytest.mark.qemu
def test_slot_is_free_again_once_the_first_client_is_gone() -> None:
    """EOF frees the slot: QEMU (reconnect=1), refused meanwhile, is then admitted."""
    pin, sin, out = (free_tcp_port() for _ in range(3))
    dp = Datapath(["--primary-in", f"tcp:127.0.0.1:{pin}",
                   "--secondary-in", f"tcp:127.0.0.1:{sin},server",
                   "--outdev", f"tcp:127.0.0.1:{out}", "--compare-timeout", "600000"])
    feeder: RedirectorFeeder | None = None
    first: socket.socket | None = None
    try:
        dp.wait_log("secondary_in: listening")
        first = socket.create_connection(("127.0.0.1", sin), timeout=10)
        dp.wait_log("secondary_in: connected")
        feeder = RedirectorFeeder([
            RedirectOut("p", f"host=127.0.0.1,port={pin},server=on,wait=off"),
            RedirectOut("s", f"host=127.0.0.1,port={sin},reconnect=1"),
            RedirectIn("o", f"host=127.0.0.1,port={out},server=on,wait=off"),
        ]).start()
        dp.wait_log("secondary_in: refused connection from")
        first.close()
        dp.wait_log("secondary_in: connection closed")
        # QEMU notices that its refused connection is dead when it next writes;
        # frames of another flow make it write (they stay unmatched, held).
        probe = udp_frame(b"probe", sport=9999)
        deadline = time.monotonic() + 20
        while dp.log().count("secondary_in: connected") < 2:
            assert time.monotonic() < deadline, dp.log()
            feeder.send("s", probe)
            time.sleep(0.2)
        for name in ("primary_in", "outdev"):
            dp.wait_log(f"{name}: connected")
        frame = udp_frame(b"the real secondary, admitted after the first left")
        feeder.send("p", frame)
        feeder.send("s", frame)
        assert feeder.recv("o", 5.0) == frame
    finally:
        if first is not None:
            first.close()
        if feeder is not None:
            feeder.stop()
        dp.close()


def _run_in_netns(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """The datapath in a new network namespace of its own (only its own lo is reachable)."""
    cmd = ["unshare", "--net", "--", sys.executable, "-c",
           "from colo_proxy.cli import main; main()", *_run_qemu_socket(), *args]
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd=ROOT)


@pytest.mark.root
def test_non_loopback_bind_without_tls_warns_once_per_endpoint(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (binds 0.0.0.0 inside its own netns)")
    pki = make_pki(tmp_path / "pki")
    log_path = tmp_path / "dp.log"
    proc = _run_in_netns(["--primary-in", "tcp:0.0.0.0:9001,server",
                          "--secondary-in", f"tcp:0.0.0.0:9004,server,tls-creds={pki.good}",
                          "--outdev", f"unix:{tmp_path}/out.sock,server",
                          "--notify-dev", "tcp:9009,server"], log_path)
    try:
        deadline = time.monotonic() + 20
        while "qemu-socket datapath running" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = log_path.read_text().splitlines()
    warnings = [line for line in lines if "WARNING" in line]
    assert len(warnings) == 1, lines
    assert warnings[0].startswith("colo-proxy: primary_in: WARNING: tcp:0.0.0.0:9001,server "
                                  "is not a loopback address and has no TLS")
    # tcp:PORT is loopback; the TLS endpoint does not warn.
    assert any("notify: listening on tcp:127.0.0.1:9009,server" in line for line in lines)
    assert any("secondary_in: listening on tcp:0.0.0.0:9004,server (TLS)" in line
               for line in lines)


_HOLDER = ("import socket,sys,time\n"
           "s=socket.create_connection(('127.0.0.1',int(sys.argv[1])))\n"
           "print(s.getsockname()[1],flush=True)\n"
           "time.sleep(600)\n")


@pytest.mark.root
def test_silent_dead_peer_is_gone_after_keepalive(tmp_path: Path) -> None:
    """A peer that stops answering (its packets dropped) frees the slot by keepalive."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None:
        pytest.skip("needs root, ip and nft (a network namespace of its own)")
    ns = f"sec-ka-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    procs: list[subprocess.Popen[bytes]] = []
    log_path = tmp_path / "dp.log"
    try:
        run = ["ip", "netns", "exec", ns]
        subprocess.run([*run, "ip", "link", "set", "lo", "up"], check=True)
        with open(log_path, "wb") as log:
            procs.append(subprocess.Popen(
                [*run, sys.executable, "-c", "from colo_proxy.cli import main; main()",
                 *_run_qemu_socket(), "--primary-in", "tcp:9001",
                 "--secondary-in", "tcp:9004,server", "--outdev", "tcp:9005"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))

        def wait_log(text: str, count: int = 1, timeout: float = 20.0) -> None:
            deadline = time.monotonic() + timeout
            while log_path.read_text().count(text) < count:
                assert procs[0].poll() is None and time.monotonic() < deadline, \
                    log_path.read_text()
                time.sleep(0.05)

        wait_log("secondary_in: listening")
        holder = subprocess.Popen([*run, sys.executable, "-c", _HOLDER, "9004"],
                                  stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        procs.append(holder)
        assert holder.stdout is not None
        port = int(holder.stdout.readline())
        wait_log("secondary_in: connected")
        # From now on the first client answers nothing: not even keepalive probes.
        subprocess.run([*run, "nft", "add table inet seck; add chain inet seck in "
                        "{ type filter hook input priority 0; }; "
                        f"add rule inet seck in tcp sport {port} drop"], check=True)
        wait_log("secondary_in: connection closed", timeout=90)
        assert "timed out" in log_path.read_text().split("secondary_in: connection closed")[1]
        second = subprocess.Popen([*run, sys.executable, "-c", _HOLDER, "9004"],
                                  stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        procs.append(second)
        wait_log("secondary_in: connected", count=2)
        assert "refused" not in log_path.read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _connect_as_nobody(path: str) -> subprocess.CompletedProcess[str]:
    script = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
              "try:\n s.connect(sys.argv[1])\nexcept OSError as e:\n print(e.errno); sys.exit(3)\n"
              "print('connected')\n")
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-c", script, path],
                          capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.root
def test_unix_server_sockets_are_0600_or_0660_with_group() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (connects as another user)")
    nogroup = grp.getgrgid(65534).gr_name
    where = tempfile.mkdtemp(prefix="colot-sec-")
    os.chmod(where, 0o755)  # the directory lets anybody reach the sockets: modes decide
    dp = Datapath(["--primary-in", f"unix:{where}/pin.sock,server",
                   "--secondary-in", f"unix:{where}/sin.sock,server,group={nogroup}",
                   "--outdev", f"unix:{where}/out.sock,server"])
    try:
        dp.wait_log("qemu-socket datapath running")
        pin, sin = os.stat(f"{where}/pin.sock"), os.stat(f"{where}/sin.sock")
        assert stat.S_ISSOCK(pin.st_mode) and stat.S_IMODE(pin.st_mode) == 0o600
        assert stat.S_IMODE(sin.st_mode) == 0o660 and sin.st_gid == 65534
        assert "secondary_in: listening on unix:" in dp.log()
        assert f"(mode 0660, group {nogroup})" in dp.log()
        denied = _connect_as_nobody(f"{where}/pin.sock")
        assert (denied.returncode, denied.stdout.strip()) == (3, "13")  # EACCES
        allowed = _connect_as_nobody(f"{where}/sin.sock")
        assert allowed.stdout.strip() == "connected", allowed.stderr
        dp.wait_log("secondary_in: connected")
        assert "primary_in: connected" not in dp.log()
    finally:
        dp.close()
        shutil.rmtree(where, ignore_errors=True)
