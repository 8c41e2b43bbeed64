"""Two hosts' worth of config, ``colo-proxy agent`` and QEMU, end to end.

A real KVM COLO pair (tests/qemu_harness/colo_pair.py) wired as
docs/operations.md deploys it: the primary agent's datapath takes colo-compare's
place (it connects to the primary QEMU's compare0 / compare_out chardevs and
listens for the secondary's redirector), each agent has its own QMP monitor, and
the two agents heartbeat over loopback.  The agents are real ``colo-proxy
agent`` processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu_harness.colo_pair import ColoPair, kvm_unusable
from qemu_harness.process import free_tcp_port, free_udp_port

pytestmark = [pytest.mark.qemu,
              pytest.mark.skipif(kvm_unusable() is not None, reason=str(kvm_unusable()))]


def _until(cond: Callable[[], bool], what: str, timeout: float = 30.0,
           logs: tuple[Agent, ...] = ()) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            tails = "".join(f"\n--- {a.log_path.name}:\n{a.log()[-3000:]}" for a in logs)
            raise AssertionError(f"timed out waiting for {what}{tails}")
        time.sleep(0.05)


class Agent:
    def __init__(self, tmp: Path, name: str, text: str) -> None:
        self.config = tmp / f"{name}.toml"
        self.config.write_text(text)
        self.log_path = tmp / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Agent:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from colo_proxy.cli import main; main()", "agent",
                 str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc


class Deployment:
    def __init__(self, tmp: Path, interval_ms: int = 100, misses: int = 5) -> None:
        self.pair = ColoPair(checkpoint_delay_ms=2000,
                             secondary_in=("127.0.0.1", free_tcp_port()))
        key = tmp / "pair.key"
        key.write_text(os.urandom(32).hex())
        key.chmod(0o600)
        p_hb, s_hb = free_udp_port(), free_udp_port()
        self.metrics_port = free_tcp_port()
        self.status_file = tmp / "primary-status.json"
        p = self.pair
        self.primary = Agent(tmp, "primary", f"""
[agent]
metrics = "127.0.0.1:{self.metrics_port}"
status_file = "{self.status_file}"

[vm.web]
role = "primary"
qmp = "{p.primary.agent_qmp}"
listen = "127.0.0.1:{p_hb}"
peer = "127.0.0.1:{s_hb}"
key_file = "{key}"

[vm.web.datapath]
kind = "qemu-socket"
primary_in = "tcp:127.0.0.1:{p.primary_in_port}"
secondary_in = "tcp:127.0.0.1:{p.secondary_in[1]},server"
outdev = "tcp:127.0.0.1:{p.outdev_port}"

[vm.web.heartbeat]
interval_ms = {interval_ms}
misses = {misses}
""")
        self.secondary = Agent(tmp, "secondary", f"""
[agent]
metrics = ""

[vm.web]
role = "secondary"
qmp = "{p.secondary.agent_qmp}"
listen = "127.0.0.1:{s_hb}"
peer = "127.0.0.1:{p_hb}"
key_file = "{key}"
redirectors = ["f1", "f2"]
failover_before = [{{execute = "nbd-server-stop"}}]   # COLO-FT.txt's first step

[vm.web.heartbeat]
interval_ms = {interval_ms}
misses = {misses}
""")

    def start(self) -> None:
        self.primary.start()          # its datapath listens for the secondary's redirector
        _until(lambda: "agent running" in self.primary.log(), "the primary agent")
        self.pair.start()
        self.secondary.start()
        _until(lambda: "agent running" in self.secondary.log(), "the secondary agent")
        self.nbd_port = free_tcp_port()
        self.pair.secondary.cmd("nbd-server-start", addr={
            "type": "inet", "data": {"host": "127.0.0.1", "port": str(self.nbd_port)}})
        self.pair.enter_colo()
        _until(lambda: "COLO running (primary)" in self.primary.log(), "primary in COLO")
        _until(lambda: "COLO running (secondary)" in self.secondary.log(), "secondary in COLO")

    def stop(self) -> None:
        self.primary.stop()
        self.secondary.stop()
        self.pair.stop()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=10) as resp:
            text: str = resp.read().decode()
            return text


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(tmp_path)
    try:
        d.start()
        yield d
    finally:
        d.stop()


def _sample(text: str, series: str) -> float:
    """The value of one series, e.g. 'colo_in_colo{vm="web"}'."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_periodic_checkpoints_metrics_and_status(deployment: Deployment) -> None:
    d = deployment
    periodic = 'colo_checkpoints_total{kind="periodic",vm="web"}'
    _until(lambda: _sample(d.metrics(), periodic) >= 1, "a periodic checkpoint in the metrics",
           timeout=120.0)
    text = d.metrics()
    assert 'colo_in_colo{vm="web"} 1.0' in text
    assert _sample(text, 'colo_checkpoint_duration_seconds_count{vm="web"}') >= 1
    assert "colo_match_release_latency_seconds_bucket" in text
    _until(d.status_file.exists, "the status file")

    def status() -> dict[str, Any]:
        res = subprocess.run([sys.executable, "-c", "from colo_proxy.cli import main; main()",
                              "status", "--agent", str(d.status_file), "--json"],
                             capture_output=True, text=True, check=True)
        web: dict[str, Any] = json.loads(res.stdout)["agent"]["web"]
        return web

    # The status file is rewritten periodically: wait for one written after the
    # checkpoint the metrics already show.
    _until(lambda: status()["checkpoints"]["periodic"] >= 1, "the checkpoint in the status file")
    web = status()
    assert web["role"] == "primary" and web["in_colo"] == 1
    assert web["checkpoints"]["periodic"] >= 1
    assert web["heartbeats_refused"] == {"forged": 0, "replayed": 0, "stale": 0,
                                         "malformed": 0, "wrong_peer": 0}
    assert web["peer"]["accepted"] > 0


def test_primary_qemu_killed_secondary_agent_takes_over(deployment: Deployment) -> None:
    d = deployment
    d.pair.primary.proc.send_signal(signal.SIGKILL)       # type: ignore[union-attr]
    _until(lambda: "failover done" in d.secondary.log(), "the secondary's failover",
           logs=(d.primary, d.secondary))
    log = d.secondary.log()
    assert "peer declared dead: the peer reports its QEMU gone" in log
    assert "x-colo-lost-heartbeat: ok" in log
    assert "object-del {'id': 'f1'}: ok" in log and "object-del {'id': 'f2'}: ok" in log
    assert log.index("failover: nbd-server-stop: ok") < log.index("x-colo-lost-heartbeat: ok")
    # The NBD server is really stopped: it can be started again.
    d.pair.secondary.cmd("nbd-server-start", addr={
        "type": "inet", "data": {"host": "127.0.0.1", "port": str(free_tcp_port())}})
    status = d.pair.secondary.cmd("query-colo-status")
    assert (status["mode"], status["last-mode"]) == ("none", "secondary")
    assert d.pair.secondary.cmd("query-status")["running"]
    objects = {o["name"] for o in d.pair.secondary.cmd("qom-list", path="/objects")}
    assert "f1" not in objects and "f2" not in objects
    assert "QMP connection closed" in d.primary.log()
    assert d.secondary.stop() == 0


def test_secondary_qemu_killed_primary_agent_continues(deployment: Deployment) -> None:
    d = deployment
    d.pair.secondary.proc.send_signal(signal.SIGKILL)     # type: ignore[union-attr]
    _until(lambda: "failover done" in d.primary.log(), "the primary's failover",
           logs=(d.primary, d.secondary))
    assert "peer declared dead" in d.primary.log()
    status = d.pair.primary.cmd("query-colo-status")
    assert (status["mode"], status["last-mode"]) == ("none", "primary")
    # QEMU restarts the primary (vm_start) once its COLO thread has finished the
    # failover, which x-colo-lost-heartbeat only requests: wait for it.
    _until(lambda: d.pair.primary.cmd("query-status")["running"], "the primary running alone",
           logs=(d.primary,))
    assert 'colo_in_colo{vm="web"} 0.0' in d.metrics()
    assert d.primary.stop() == 0


def test_secondary_agent_killed_is_a_silent_peer(deployment: Deployment) -> None:
    """Without a witness, a silent peer is a dead peer: the primary leaves COLO."""
    d = deployment
    d.secondary.stop(signal.SIGKILL)
    _until(lambda: "failover done" in d.primary.log(), "the primary's failover",
           logs=(d.primary, d.secondary))
    assert "heartbeats missed (no witness configured)" in d.primary.log()


def test_agent_restart_within_the_miss_window_changes_nothing(tmp_path: Path) -> None:
    d = Deployment(tmp_path, interval_ms=200, misses=50)   # 10 s of silence allowed
    try:
        d.start()
        d.secondary.stop(signal.SIGKILL)
        d.secondary.start()
        _until(lambda: d.primary.log().count("heartbeat from a new peer session") >= 2,
               "heartbeats of the restarted agent")
        _until(lambda: d.secondary.log().count("COLO running (secondary)") >= 2,
               "the restarted agent back in COLO")
        assert "failover" not in d.primary.log()
        assert d.pair.primary.cmd("query-colo-status")["mode"] == "primary"
    finally:
        d.stop()
