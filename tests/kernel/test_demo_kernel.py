"""``colo-proxy demo --datapath kernel`` end to end in the guest kernel.

The demo's own five namespaces, services and HTTP driver, with the nf_colo node in
the primary host instead of a userspace datapath.  Asserted: every request complete
and correct (the driver checks each deterministic body byte for byte); the token the
client received for each ``/session`` request is in the PVM's captured output and not
in the SVM's (the client got the PVM's bytes); the checkpoint count the demo expects
for this kernel (one per token response when the kernel compares TCP, none while it
passes TCP uncompared: see docs/architecture.md); a clean exit of the datapath with
the node destroyed; nothing left behind (namespaces, processes, nodes).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from colo_env import insmod, report
from scapy.layers.inet import TCP
from scapy.utils import rdpcap

from colo_proxy.demo.content import TOKEN_RE
from colo_proxy.demo.lock import lock_path
from colo_proxy.nl import ColoClient

pytestmark = pytest.mark.kernel

CLI = [sys.executable, "-c", "from colo_proxy.cli import main; main()"]
TAG_VAR = "COLOT_KDEMO_TAG"
DURATION_S = "8"


def _netns_with(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(prefix + "-"))
    except FileNotFoundError:
        return []


def _pids_tagged(tag: str) -> list[int]:
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                env = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if needle in env.split(b"\0"):
                found.append(int(entry))
    return found


@pytest.fixture
def run_id(colo_ko: Path) -> Iterator[tuple[str, str]]:
    insmod(colo_ko)
    prefix, tag = f"kdt-{secrets.token_hex(3)}", secrets.token_hex(8)
    try:
        yield prefix, tag
    finally:
        for pid in _pids_tagged(tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for name in _netns_with(prefix):
            subprocess.run(["ip", "netns", "del", name], check=False)
        lock_path(prefix).unlink(missing_ok=True)


def _server_streams(pcap: Path) -> dict[int, bytes]:
    """The service's TCP payload towards each client port in a capture, in sequence
    order (each segment once)."""
    segments: dict[int, dict[int, bytes]] = {}
    for pkt in rdpcap(str(pcap)):
        if TCP in pkt and pkt[TCP].sport == 80:
            payload = bytes(pkt[TCP].payload)
            if payload:
                segments.setdefault(int(pkt[TCP].dport), {}).setdefault(int(pkt[TCP].seq),
                                                                        payload)
    return {port: b"".join(seg[seq] for seq in sorted(seg)) for port, seg in segments.items()}


def _events(log_dir: Path) -> list[dict[str, Any]]:
    lines = (log_dir / "datapath-kernel.out").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_demo_on_the_kernel_datapath(run_id: tuple[str, str], tmp_path: Path,
                                     request: pytest.FixtureRequest) -> None:
    prefix, tag = run_id
    captures, logs = tmp_path / "captures", tmp_path / "logs"
    started = time.monotonic()
    proc = subprocess.run(
        [*CLI, "demo", "--datapath", "kernel", "--prefix", prefix, "--duration", DURATION_S,
         "--token-interval", "2", "--baseline", "0", "--json", "--plain", "--ready-timeout", "300",
         "--save-captures", str(captures), "--log-dir", str(logs)],
        capture_output=True, text=True, env={**os.environ, TAG_VAR: tag}, timeout=600,
        check=False)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary: dict[str, Any] = json.loads(proc.stdout)
    report(request, f"demo took {elapsed:.0f} s; its output:\n{proc.stderr}")
    assert summary["datapath"] == "kernel"

    req = summary["requests"]
    assert req["total"] > 0
    assert req["failed"] == 0, req["failures"]
    assert req["complete"] == req["total"]
    assert req["by_kind"].get("keepalive", 0) > 0 and req["by_kind"].get("new", 0) > 0

    # The client got the PVM's bytes: each token it received is in the PVM's output
    # on that connection and nowhere in the SVM's (each replica drew its own).
    tokens = summary["token_requests"]
    assert tokens, "the driver made no /session request"
    pvm, svm = (_server_streams(captures / name) for name in ("primary.pcap", "secondary.pcap"))
    for t in tokens:
        assert t["ok"], t
        token = str(t["token"]).encode()
        assert token in pvm.get(t["local_port"], b""), t
        # The SVM answered the same request with a token of its own.
        svm_tokens = TOKEN_RE.findall(svm.get(t["local_port"], b""))
        assert svm_tokens and token not in svm_tokens, (t, svm_tokens)

    counters = summary["counters"]
    assert counters["frames"]["primary"] > 0 and counters["frames"]["secondary"] > 0
    # The kernel saw the PVM's output and let it go: released after a match or a
    # checkpoint, or passed uncompared (TCP, while the kernel does not compare it).
    assert counters["released"] + counters["uncompared"] > 0, counters
    cps = summary["checkpoints"]
    tcp_compared = counters.get("uncompared", 0) == 0
    if tcp_compared:
        # One payload mismatch per token response, each answered by one checkpoint.
        assert cps["by_reason"] == {"payload-mismatch": len(tokens)}, summary["checkpoint_list"]
        for t in tokens:
            assert t["checkpoint"] is not None, f"token request {t['n']}: no checkpoint"
        assert summary["connections"]["deterministic_with_checkpoint"] == []
    else:
        # This kernel passes TCP uncompared: the HTTP traffic raises no request.
        assert cps["requested"] == 0, summary["checkpoint_list"]
        assert "passed uncompared" in proc.stderr
    assert cps["flushes"] == cps["requested"]

    # Clean exit: SIGINT, the node destroyed, its final figures in the exit event.
    assert summary["datapath_exit"] == "signal SIGINT"
    events = _events(logs)
    assert events[0]["event"] == "ready"
    exit_event = events[-1]
    assert exit_event["event"] == "exit", exit_event
    assert exit_event["lost"] == 0
    assert exit_event["checkpoints_done"] == cps["flushes"]
    assert exit_event["released"] == exit_event["delivered"] == counters["released"]

    # Nothing left: namespaces, processes, and no node in this namespace either.
    assert "cleaned up" in proc.stderr
    assert _netns_with(prefix) == []
    assert _pids_tagged(tag) == []
    with ColoClient() as client:
        assert client.dump() == []
    report(request, f"{req['total']} requests, {len(tokens)} tokens, checkpoints "
                    f"{cps['requested']}, kernel counters {counters}")
