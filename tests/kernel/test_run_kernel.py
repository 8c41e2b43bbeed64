"""``colo-proxy run kernel`` on a real nf_colo node (UDP: compared by the kernel today).

The datapath process attaches the node in the primary host of tests/kernel/dp_topo.py
(routed); the test plays the client, the PVM and the SVM with sockets.  A diverging SVM
reply raises checkpoint-needed; the datapath hands it to its ``--checkpoint cmd`` policy
(the command sees COLO_REASON and COLO_CONNECTION), sends DO_CHECKPOINT when it exits 0,
and the client receives the PVM's reply.  At SIGINT a reply still held (no SVM copy,
long hold timeout) is released by the node-loss rule and counted in the exit event.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from colo_env import insmod
from dp_topo import PVM_IP, PVM_PORT, Topo, recv_or_none, topology

from colo_proxy.nl import ColoClient

pytestmark = pytest.mark.kernel

CLI = [sys.executable, "-c", "from colo_proxy.cli import main; main()"]
START_S = 300.0  # interpreter start-up and imports under TCG


@pytest.fixture
def topo(colo_ko: Path) -> Iterator[Topo]:
    insmod(colo_ko)
    with topology(bridged=False) as t:
        yield t


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _wait_event(path: Path, proc: subprocess.Popen[bytes], stderr: Path, kind: str,
                timeout: float = START_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for event in _events(path):
            if event["event"] == kind:
                return event
        assert proc.poll() is None or kind == "exit", \
            f"run kernel exited ({proc.returncode}) before {kind}: {stderr.read_text()}"
        assert time.monotonic() < deadline, f"no {kind} event: {_events(path)}"
        time.sleep(0.1)


def test_checkpoint_cmd_then_node_loss_release_at_exit(topo: Topo, tmp_path: Path) -> None:
    events, ran, err = tmp_path / "events.jsonl", tmp_path / "ran.txt", tmp_path / "stderr"
    cmd = f'echo "$COLO_REASON $COLO_CONNECTION" >> {ran}'
    with open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [*CLI, "run", "kernel", "--netns", topo.h, "--pvm-if", "tap0", "--fwd-if", "fwd0",
             "--checkpoint-cmd", cmd, "--compare-timeout", "600000", "--events", str(events),
             "--stats-interval", "0.2"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    server = topo.udp(topo.p, PVM_IP, PVM_PORT)
    csock = topo.udp(topo.c, topo.client_ip, 0)
    svm = topo.svm_socket()
    try:
        ready = _wait_event(events, proc, err, "ready")
        with ColoClient(netns=topo.h) as client:
            assert str(client.get(ready["node"]).mode) == "primary"

        cport = int(csock.getsockname()[1])
        csock.sendto(b"token?", (PVM_IP, PVM_PORT))
        server.settimeout(60)
        _, addr = server.recvfrom(100)
        server.sendto(b"token=PVM-1234", addr)
        time.sleep(0.5)
        assert recv_or_none(csock, 0.5) is None, "released before the SVM's copy"
        svm.send(topo.svm_udp(PVM_PORT, topo.client_ip, cport, b"token=SVM-9876"))
        assert recv_or_none(csock, 60) == b"token=PVM-1234"
        request = _wait_event(events, proc, err, "checkpoint-request")
        assert request["reason"] == "payload-mismatch"
        assert request["key"]["sport"] == PVM_PORT and request["key"]["dport"] == cport
        assert request["policy"] == "cmd"
        done = _wait_event(events, proc, err, "checkpoint-done")
        assert done["policy"] == "cmd"
        line = ran.read_text().splitlines()
        assert line == [f"payload-mismatch udp {PVM_IP}:{PVM_PORT} -> {topo.client_ip}:{cport}"]

        # A reply the SVM never matches stays held until the datapath exits.
        csock.sendto(b"again", (PVM_IP, PVM_PORT))
        _, addr = server.recvfrom(100)
        server.sendto(b"held until exit", addr)
        time.sleep(0.5)
        assert recv_or_none(csock, 1.0) is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, err.read_text()
        assert recv_or_none(csock, 30) == b"held until exit"
        final = _wait_event(events, proc, err, "exit")
        assert final["reason"] == "signal SIGINT"
        assert final["exit_released"] == 1
        assert final["checkpoint_requests"] == 1 and final["checkpoints_done"] == 1
        assert final["frames"]["primary"] >= 2 and final["frames"]["secondary"] >= 1
        assert final["lost"] == 0
        with ColoClient(netns=topo.h) as client:
            assert client.dump() == []  # the node is gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for s in (server, csock, svm):
            s.close()
