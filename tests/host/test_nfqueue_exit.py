"""SIGTERM under full-rate traffic through the NFQUEUE datapath: the exit figures are final.

The PVM and the SVM both flood the client with the same UDP datagrams as fast as
they can.  The rules are the operator's (``--rules none``, installed by the test,
fail-closed), so once the datapath has exited no PVM packet passes uncompared: every
datagram the client receives was accepted by the datapath.  After SIGTERM the
client's count (plus any datagram its socket buffer dropped, from the client's
own UDP counters) must equal the ``delivered`` figure of the exit event.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nfqueue_support import Datapath, stop_process, topology

from colo_proxy.rules import RuleManager, RuleSpec

pytestmark = pytest.mark.root

PORT = 7100
RECEIVER = r"""
import signal, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
n = 0
def done(*_):
    print(n, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
print("up", flush=True)
while True:
    s.recv(65535)
    n += 1
"""
FLOOD = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7101))
i = 0
print("up", flush=True)
while True:
    try:
        s.sendto(b"flood %08d " % i + b"x" * 200, (sys.argv[1], int(sys.argv[2])))
    except OSError:
        pass  # ENOBUFS when the queue is full
    i += 1
"""


def _udp_rcvbuf_errors(ns: str) -> int:
    text = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"],
                          capture_output=True, text=True, check=True).stdout
    head, values = [line.split() for line in text.splitlines() if line.startswith("Udp:")][:2]
    return int(values[head.index("RcvbufErrors")])


def test_sigterm_under_flood_counts_every_accepted_packet(tmp_path: Path) -> None:
    with topology() as topo:
        rules = RuleManager(RuleSpec(pvm_if=topo.phost_pvm_if, fwd_if=topo.phost_fwd_if,
                                     fail_open=False), netns=topo.phost)
        rules.apply()
        receiver = subprocess.Popen(["ip", "netns", "exec", topo.client, sys.executable, "-c",
                                     RECEIVER, topo.client_ip, str(PORT)],
                                    stdout=subprocess.PIPE, text=True)
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "up"
        floods: list[subprocess.Popen[str]] = []
        try:
            with Datapath(topo, tmp_path, "--rules", "none", "--fail-closed",
                          "--queue-maxlen", "4096") as dp:
                errors_before = _udp_rcvbuf_errors(topo.client)
                for ns in (topo.svm, topo.pvm):
                    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c",
                                             FLOOD, topo.client_ip, str(PORT)],
                                            stdout=subprocess.PIPE, text=True)
                    floods.append(proc)
                    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
                dp.stats_when(lambda st: st["seam"]["delivered_frames"] >= 3000, timeout=30)
                assert dp.last_stats()["seam"]["delivered_frames"] >= 3000, "no flood"
                assert dp.stop(signal.SIGTERM) == 0, dp.stderr
            # The datapath is gone; the fail-closed rules stay, so nothing more passes.
            time.sleep(1.0)
            receiver.send_signal(signal.SIGTERM)
            out, _ = receiver.communicate(timeout=10)
            received = int(out.strip())
            lost_in_socket = _udp_rcvbuf_errors(topo.client) - errors_before
            final = dp.events()[-1]
            assert final["event"] == "exit" and final["reason"] == "signal SIGTERM"
            assert final["lost"] == 0
            assert final["delivered"] == final["released"] > 0
            print(f"client received {received}, socket drops {lost_in_socket}, exit {final}")
            assert received + lost_in_socket == final["delivered"], (received, final)
            assert "nfqueue datapath running" in dp.stderr
            assert "exit: frames primary=" in dp.stderr
        finally:
            for proc in floods:
                stop_process(proc, signal.SIGKILL)
            stop_process(receiver, signal.SIGKILL)
            rules.remove()
