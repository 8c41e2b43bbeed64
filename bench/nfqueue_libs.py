#!/usr/bin/env python3
"""NFQUEUE client libraries side by side: packets/s through one queue, one run.

A UDP flood on loopback inside a fresh namespace goes through
``iptables -A OUTPUT -j NFQUEUE``; the consumer copies each payload and
accepts it.  Compared: netfilterqueue (libnetfilter_queue, Cython callback),
fnfqueue (cffi, reader thread) and a pure pyroute2 client (messages declared
with pyroute2's nlmsg classes, colo_proxy.datapath.nfqueue_proto), the latter
with one verdict per packet and with NFQNL_MSG_VERDICT_BATCH.  Run as root:

    .venv/bin/python bench/nfqueue_libs.py [--packets 20000]
"""

from __future__ import annotations

import argparse
import secrets
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

QUEUE, PORT = 5, 9999
LIBS = ["netfilterqueue", "fnfqueue", "pyroute2", "pyroute2-batch"]


def consumer_netfilterqueue(n: int, done: Callable[[], bool], go: Callable[[], None]) -> None:
    from netfilterqueue import NetfilterQueue

    count = [0]

    def cb(p: object) -> None:
        p.get_payload()  # type: ignore[attr-defined]
        p.accept()  # type: ignore[attr-defined]
        count[0] += 1

    q = NetfilterQueue()
    q.bind(QUEUE, cb, max_len=100000)
    fd = q.get_fd()
    go()
    while count[0] < n and not done():
        if select.select([fd], [], [], 0.5)[0]:
            q.run(block=False)
    q.unbind()


def consumer_fnfqueue(n: int, done: Callable[[], bool], go: Callable[[], None]) -> None:
    import fnfqueue

    conn = fnfqueue.Connection()
    q = conn.bind(QUEUE)
    q.set_mode(0xFFFF, fnfqueue.COPY_PACKET)
    q.set_maxlen(100000)
    go()

    def loop() -> None:
        for seen, p in enumerate(conn, 1):
            _ = p.payload
            p.accept()
            if seen >= n:
                return

    # Its iterator blocks until the next packet: run it where it cannot hang us.
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    while thread.is_alive() and not done():
        thread.join(0.5)


def consumer_pyroute2(n: int, done: Callable[[], bool], go: Callable[[], None],
                      batch: bool) -> None:
    from pyroute2.netlink import nlmsg

    from colo_proxy.datapath import nfqueue_proto as proto

    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto.NETLINK_NETFILTER)
    sock.bind((0, 0))
    sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)
    for seq, attrs in enumerate([
        [("NFQA_CFG_CMD", {"command": proto.NFQNL_CFG_CMD_BIND, "pf": 0})],
        [("NFQA_CFG_PARAMS", {"copy_range": 0xFFFF, "copy_mode": proto.NFQNL_COPY_PACKET}),
         ("NFQA_CFG_QUEUE_MAXLEN", 100000)],
    ], 1):
        sock.send(proto.config_message(QUEUE, seq, attrs))
        nlmsg(sock.recv(65536)).decode()  # the ACK
    sock.setblocking(False)
    go()
    seen = 0
    seq = 10
    while seen < n and not done():
        if not select.select([sock], [], [], 0.5)[0]:
            continue
        last = None
        while True:
            try:
                data = sock.recv(70000)
            except BlockingIOError:
                break
            msg = proto.nfq_packet_msg(data)
            msg.decode()
            hdr = msg.get_attr("NFQA_PACKET_HDR")
            if hdr is None:
                continue
            msg.get_attr("NFQA_PAYLOAD")
            seen += 1
            last = hdr["packet_id"]
            if not batch:
                seq += 1
                sock.send(proto.verdict_message(QUEUE, last, proto.NF_ACCEPT, False, seq))
        if batch and last is not None:
            seq += 1
            sock.send(proto.verdict_message(QUEUE, last, proto.NF_ACCEPT, True, seq))
    sock.close()


FLOOD = r"""
import socket, sys, threading, time
n, port = int(sys.argv[1]), int(sys.argv[2])
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
rx.bind(("127.0.0.1", port))
got = 0
def send():
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(n):
        tx.sendto(b"x" * 100, ("127.0.0.1", port))
start = time.perf_counter()
threading.Thread(target=send, daemon=True).start()
rx.settimeout(3)
last = start
try:
    while got < n:
        rx.recv(2048)
        got += 1
        last = time.perf_counter()
except TimeoutError:
    pass
print(got, last - start)
"""


def worker(lib: str, n: int) -> None:
    """Runs inside the namespace: bind, start the flood (its own process, so it
    does not share our GIL), consume until it reports, print its result."""
    subprocess.run(["ip", "link", "set", "dev", "lo", "up"], check=True)
    subprocess.run(["iptables", "-A", "OUTPUT", "-p", "udp", "--dport", str(PORT), "-j",
                    "NFQUEUE", "--queue-num", str(QUEUE)], check=True)
    flood: list[subprocess.Popen[str]] = []

    def go() -> None:
        """Called by the consumer once its queue is bound."""
        flood.append(subprocess.Popen([sys.executable, "-c", FLOOD, str(n), str(PORT)],
                                      stdout=subprocess.PIPE, text=True))

    def done() -> bool:
        return bool(flood) and flood[0].poll() is not None

    consumers: dict[str, Callable[[], None]] = {
        "netfilterqueue": lambda: consumer_netfilterqueue(n, done, go),
        "fnfqueue": lambda: consumer_fnfqueue(n, done, go),
        "pyroute2": lambda: consumer_pyroute2(n, done, go, batch=False),
        "pyroute2-batch": lambda: consumer_pyroute2(n, done, go, batch=True),
    }
    consumers[lib]()
    out, _ = flood[0].communicate(timeout=60)
    print(out.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--worker", choices=LIBS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.packets)
        return
    rates: dict[str, float] = {}
    for lib in LIBS:
        ns = "colot-libs-" + secrets.token_hex(3)
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__,
                                  "--worker", lib, "--packets", str(args.packets)],
                                 capture_output=True, text=True, check=True, timeout=300)
            got, elapsed = out.stdout.split()
            rates[lib] = int(got) / float(elapsed)
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=True)
    base = rates["netfilterqueue"]
    print(f"# bench/nfqueue_libs.py  packets={args.packets} (100-byte UDP, accept each)")
    print(f"{'library':<18}{'packets/s':>12}{'ratio':>9}")
    for lib, rate in rates.items():
        print(f"{lib:<18}{rate:>12.0f}{rate / base:>9.3f}")


if __name__ == "__main__":
    main()
