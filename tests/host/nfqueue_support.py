"""Helpers for the NFQUEUE datapath, rules and topology tests (root, namespaces)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from colo_proxy.topology import Topology, build
from colo_proxy.topology import netns as ns_util

COLO_PROXY = str(Path(sys.executable).parent / "colo-proxy")
UDP_PORT = 7000
TCP_PORT = 8080

# Deterministic services for the "VMs": the reply depends on the request only,
# except for requests starting with "diverge", which name the replica.  Both
# sockets are bound (and listening) before "up" is printed: a request sent right
# after "up" must find them (it used to race the UDP thread's bind, and a lost
# reply looked like a slow one).
SERVER = r"""
import socket, sys, threading
variant = sys.argv[1].encode()
UDP_PORT, TCP_PORT = int(sys.argv[2]), int(sys.argv[3])
udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp_sock.bind(("0.0.0.0", UDP_PORT))
tcp_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp_sock.bind(("0.0.0.0", TCP_PORT))
tcp_sock.listen(16)
def udp():
    s = udp_sock
    while True:
        data, peer = s.recvfrom(65535)
        reply = b"echo:" + data
        if data.startswith(b"diverge"):
            reply = b"answer from " + variant
        s.sendto(reply, peer)
def tcp_conn(c):
    with c:
        buf = b""
        while True:
            data = c.recv(65535)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.startswith(b"diverge"):
                    c.sendall(b"answer from " + variant + b"\n")
                else:
                    n = int(line or b"0")
                    c.sendall(bytes((i * 7) & 0xFF for i in range(n)))
def tcp():
    while True:
        c, _ = tcp_sock.accept()
        threading.Thread(target=tcp_conn, args=(c,), daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
print("up", flush=True)
tcp()
"""


def unique_prefix() -> str:
    return "colot-" + secrets.token_hex(3)


@contextmanager
def topology() -> Iterator[Topology]:
    topo = build(unique_prefix())
    try:
        yield topo
    finally:
        topo.destroy()


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def servers(topo: Topology, svm: bool = True) -> Iterator[None]:
    procs = []
    try:
        for ns, variant in ((topo.pvm, "pvm"), (topo.svm, "svm")):
            if ns == topo.svm and not svm:
                continue
            argv = ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, variant,
                    str(UDP_PORT), str(TCP_PORT)]
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        yield
    finally:
        for proc in procs:
            stop_process(proc, signal.SIGKILL)


class Datapath:
    """``colo-proxy run nfqueue`` in phost, with its event stream in a file."""

    def __init__(self, topo: Topology, tmp: Path, *extra: str) -> None:
        self.topo = topo
        self.events_path = tmp / f"events-{secrets.token_hex(3)}.jsonl"
        self.argv = [COLO_PROXY, "run", "nfqueue", "--netns", topo.phost,
                     "--pvm-if", topo.phost_pvm_if, "--fwd-if", topo.phost_fwd_if,
                     "--events", str(self.events_path), "--stats-interval", "0.2", *extra]
        self.proc: subprocess.Popen[str] | None = None
        self.stderr = ""

    def start(self, timeout: float = 30.0) -> Datapath:
        self.proc = subprocess.Popen(self.argv, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e["event"] == "ready" for e in self.events()):
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"datapath exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            time.sleep(0.05)
        raise AssertionError("datapath not ready")

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        out = []
        for line in self.events_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line being written
        return out

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event"] == name]

    def wait_for(self, name: str, count: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.named(name)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no {count} {name!r} events; got {self.events()[-5:]}")

    def stats_when(self, settled: Callable[[dict[str, Any]], bool],
                   timeout: float = 20.0) -> dict[str, Any]:
        """The last stats event, once one for which ``settled`` holds was written
        (the datapath writes one every 0.2 s; under load the one after the traffic
        comes late) or ``timeout`` seconds passed: the caller asserts on it."""
        deadline = time.monotonic() + timeout
        while not any(settled(stats) for stats in self.named("stats")) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.last_stats()

    def last_stats(self) -> dict[str, Any]:
        stats = self.named("stats")
        assert stats, "no stats event"
        return stats[-1]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        stop_process(self.proc, sig)
        if self.proc.stderr is not None and not self.proc.stderr.closed:
            self.stderr = self.proc.stderr.read()
            self.proc.stderr.close()
        return self.proc.returncode

    def __enter__(self) -> Datapath:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


def udp_exchange(topo: Topology, messages: list[bytes], wait: float = 1.0,
                 expect: int | None = None, timeout: float = 20.0) -> list[bytes]:
    """Send each message from the client to the VM address and collect the replies.

    ``expect``: the number of replies the caller asserts; they may take up to
    ``timeout`` seconds (a loaded machine), and once they are in, anything arriving
    until ``wait`` quiet seconds later is collected too (a duplicate or a reply that
    should not exist).  Without ``expect`` (the caller asserts that nothing or
    fewer replies come): every reply until ``wait`` quiet seconds after the last
    send or reply."""

    def run() -> list[bytes]:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((topo.client_ip, 0))
        replies: list[bytes] = []
        try:
            for msg in messages:
                s.sendto(msg, (topo.vm_ip, UDP_PORT))
            deadline = time.monotonic() + timeout
            while expect is not None and len(replies) < expect:
                left = deadline - time.monotonic()
                if left <= 0:
                    return replies
                s.settimeout(left)
                try:
                    replies.append(s.recv(65535))
                except TimeoutError:
                    return replies
            s.settimeout(wait)
            while True:
                try:
                    replies.append(s.recv(65535))
                except TimeoutError:
                    return replies
        finally:
            s.close()

    return ns_util.run_in(topo.client, run)


def tcp_request(topo: Topology, line: bytes, expect: int, timeout: float = 10.0) -> bytes:
    """Send one line over a new TCP connection and read ``expect`` bytes."""

    def run() -> bytes:
        with socket.create_connection((topo.vm_ip, TCP_PORT), timeout=timeout) as s:
            s.sendall(line + b"\n")
            data = b""
            while len(data) < expect:
                chunk = s.recv(65535)
                if not chunk:
                    break
                data += chunk
            return data

    return ns_util.run_in(topo.client, run)


def queue_proc(topo: Topology) -> dict[int, dict[str, int]]:
    """/proc/net/netfilter/nfnetlink_queue of phost, by queue number."""

    def read() -> str:
        with open("/proc/thread-self/net/netfilter/nfnetlink_queue") as f:
            return f.read()

    fields = ("queue", "portid", "total", "copy_mode", "copy_range", "dropped", "user_dropped",
              "id_sequence")
    out = {}
    for line in ns_util.run_in(topo.phost, read).splitlines():
        values = [int(v) for v in line.split()[: len(fields)]]
        row = dict(zip(fields, values, strict=True))
        out[row["queue"]] = row
    return out


def pattern(n: int) -> bytes:
    return bytes((i * 7) & 0xFF for i in range(n))


def env_root() -> bool:
    return os.geteuid() == 0
