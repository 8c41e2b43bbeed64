"""SIGTERM under full-rate traffic: the exit line's figures are final (issue 8, §1 Exit).

Plain sockets play QEMU on every endpoint.  Two threads pump primary and
secondary frames as fast as the datapath takes them (a few secondaries differ, so
checkpoints, flushes and held frames are part of the run); a third reads outdev to
EOF.  SIGTERM lands in the middle of the stream.  Then every frame the datapath
says it released and delivered must have arrived on outdev, exactly once, and
the exit line and the exit event must agree with that count.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from qemu_harness.driver import OutdevReader
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from test_qemu_socket_reads import _Datapath

from colo_proxy.qemu.framing import encode

BATCH = 200


def _frame(i: int, side: str) -> bytes:
    payload = bytes([i & 0xFF]) * (64 + i % 700)
    if side == "s" and i % 997 == 500:
        payload = b"!" + payload[1:]  # a real divergence now and then
    return bytes(Ether(src="52:54:00:00:00:01", dst="52:54:00:00:00:02")
                 / IP(src="10.0.0.1", dst="10.0.0.2", id=i & 0xFFFF)
                 / UDP(sport=20000 + i % 50, dport=5353) / payload)


def _batches(side: str, count: int) -> list[bytes]:
    return [b"".join(encode(_frame(b * BATCH + i, side), None) for i in range(BATCH))
            for b in range(count)]


def _pump(sock: socket.socket, batches: list[bytes], sent: list[int],
          stop: threading.Event) -> None:
    try:
        while not stop.is_set():
            for data in batches:
                sock.sendall(data)
                sent[0] += BATCH
                if stop.is_set():
                    return
    except OSError:
        return  # the datapath closed its inputs at SIGTERM


@pytest.mark.parametrize("held", ["flush", "drop"])
def test_sigterm_under_full_rate_traffic_loses_nothing(held: str, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    dp = _Datapath(["--checkpoint", "flush", "--held-on-exit", held,
                    "--events", str(events), "--stats-interval", "0.2"])
    try:
        pin, sin, out = dp.connect()
        reader = OutdevReader(out)
        got: list[int] = []
        read_thread = threading.Thread(
            target=lambda: got.append(len(reader.wait_for(1 << 62, 120.0))), daemon=True)
        read_thread.start()
        stop = threading.Event()
        sent_p, sent_s = [0], [0]
        # Secondaries a little behind the primaries, so frames are held at the signal.
        pumps = [threading.Thread(target=_pump, args=(pin, _batches("p", 10), sent_p, stop),
                                  daemon=True),
                 threading.Thread(target=_pump, args=(sin, _batches("s", 10), sent_s, stop),
                                  daemon=True)]
        for t in pumps:
            t.start()
        deadline = time.monotonic() + 60
        while sent_p[0] < 20 * BATCH * 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sent_p[0] >= 20 * BATCH * 10, "the pumps did not get going"
        dp.proc.send_signal(signal.SIGTERM)
        assert dp.proc.wait(60) == 0, dp.log()
        stop.set()
        read_thread.join(60)
        for t in pumps:
            t.join(10)
        assert reader.closed, "outdev was not closed at exit"
        received = got[0]
        log = dp.log()
        line = re.search(r"exit: frames primary=(\d+) secondary=(\d+) released=(\d+) "
                         r"delivered=(\d+) lost=(\d+)", log)
        assert line is not None, log
        primary, _, released, delivered, lost = (int(x) for x in line.groups())
        final = [json.loads(x) for x in events.read_text().splitlines()][-1]
        assert final["event"] == "exit" and final["reason"] == "signal SIGTERM"
        assert lost == 0 and final["lost"] == 0
        assert received == delivered == released == final["delivered"] == final["released"]
        assert received > 0
        if held == "flush":
            # Every primary the datapath read came out: compared, flushed or at exit.
            assert received == primary
            assert final["exit_dropped_primary"] == 0
        else:
            assert received + final["exit_dropped_primary"] == primary
        # The frames are those sent, in order per flow, each once.
        assert reader.frames[0].payload == _frame(0, "p")
    finally:
        dp.close()
