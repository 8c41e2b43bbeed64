"""``colo-proxy demo`` end to end: real namespaces, real NFQUEUE datapath, real HTTP.

Each run gets a unique ``colot-`` prefix and a unique tag in its environment; the
demo's children inherit the environment, so "no process left behind" is checked
by scanning every process's environment for the tag.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from colo_proxy.demo.lock import lock_path
from colo_proxy.demo.procs import netns_pids
from colo_proxy.demo.session import BASELINE_PORTS

pytestmark = pytest.mark.root

CLI = [sys.executable, "-c", "from colo_proxy.cli import main; main()"]
TAG_VAR = "COLOT_DEMO_TAG"


def _netns_with(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(prefix + "-"))
    except FileNotFoundError:
        return []


def _pids_tagged(tag: str) -> list[int]:
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry))
    return found


def _kill_tagged(tag: str) -> None:
    for pid in _pids_tagged(tag):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class DemoRun:
    def __init__(self) -> None:
        self.prefix = f"colot-{secrets.token_hex(3)}"
        self.tag = secrets.token_hex(8)
        self.env = {**os.environ, TAG_VAR: self.tag}

    def argv(self, *args: str) -> list[str]:
        return [*CLI, "demo", "--prefix", self.prefix, *args]

    def leftovers(self) -> tuple[list[str], list[int]]:
        return _netns_with(self.prefix), _pids_tagged(self.tag)


@pytest.fixture
def demo_run() -> Iterator[DemoRun]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    run = DemoRun()
    try:
        yield run
    finally:
        # Whatever the demo left (it should leave nothing; the tests assert that).
        _kill_tagged(run.tag)
        for name in _netns_with(run.prefix):
            subprocess.run(["ip", "netns", "del", name], check=False)
        # The demo keeps its lock file (see lock.py); this prefix is never used again.
        lock_path(run.prefix).unlink(missing_ok=True)


def _diff_json(primary: Path, secondary: Path) -> dict[str, Any]:
    proc = subprocess.run([*CLI, "diff", "--json", str(primary), str(secondary)],
                          capture_output=True, text=True, timeout=120, check=False)
    # 0 (match) or 1 (diverged, once diff exits like diff(1)): never bad input.
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _stall_secondary_in_baseline(proc: subprocess.Popen[str], prefix: str) -> str:
    """Read the demo's stderr up to its first baseline part and stop the secondary's
    processes for a moment there: a slower secondary, as on a loaded host, which
    leaves the baseline's secondary with answers nothing acknowledges.  Returns the
    stderr read."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("unprotected baseline, part 1"):
            break
    else:
        raise AssertionError("no baseline part 1: " + "".join(seen)[-2000:])
    time.sleep(0.3)
    pids = netns_pids(f"{prefix}-svm")
    assert pids, "no process in the secondary"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(0.3)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    return "".join(seen)


def _read_to_end(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """The rest of stdout and stderr, through the file objects (communicate() would
    skip what their buffers already hold), and the exit."""
    out: dict[str, str] = {}
    readers = [threading.Thread(target=lambda n=name, f=f: out.__setitem__(n, f.read()),
                                daemon=True)
               for name, f in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for r in readers:
        r.start()
    proc.wait(timeout=timeout)
    for r in readers:
        r.join(timeout=10)
    return out.get("stdout", ""), out.get("stderr", "")


def _client_ports(path: Path) -> set[int]:
    """The client ports of the TCP frames to or from port 80 in a capture."""
    from scapy.layers.inet import TCP
    from scapy.utils import PcapReader

    found = set()
    with PcapReader(str(path)) as reader:
        for pkt in reader:
            if TCP in pkt:
                tcp = pkt[TCP]
                found.add(tcp.dport if tcp.sport == 80 else tcp.sport)
    return found


def test_demo_summary(demo_run: DemoRun, tmp_path: Path) -> None:
    captures, plot = tmp_path / "captures", tmp_path / "latency.png"
    # --plot needs the optional matplotlib ('plot' extra).
    plotting = importlib.util.find_spec("matplotlib") is not None
    proc = subprocess.Popen(demo_run.argv("--duration", "8", "--json", "--plain",
                                          "--baseline", "3", "--save-captures", str(captures),
                                          *(["--plot", str(plot)] if plotting else [])),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=demo_run.env)
    try:
        stderr = _stall_secondary_in_baseline(proc, demo_run.prefix)
        stdout, rest = _read_to_end(proc, timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    proc_stderr = stderr + rest
    assert proc.returncode == 0, proc_stderr[-3000:]
    summary: dict[str, Any] = json.loads(stdout)

    req = summary["requests"]
    assert req["total"] > 0
    assert req["failed"] == 0, req["failures"]
    assert req["complete"] == req["total"]
    assert req["by_kind"].get("keepalive", 0) > 0 and req["by_kind"].get("new", 0) > 0

    conns = summary["connections"]
    assert conns["deterministic"] > 0
    assert conns["deterministic_with_checkpoint"] == [], summary["checkpoint_list"]
    assert conns["matched_by_proxy"] > 0
    assert summary["bytes_compared"] > 0

    tokens = summary["token_requests"]
    assert tokens, "the driver made no /session request"
    for t in tokens:
        assert t["ok"]
        assert t["checkpoint"] is not None, f"token request {t['n']} caused no checkpoint"
        assert t["checkpoint_reason"] == "payload-mismatch"
        assert t["in_token"] is True
    cps = summary["checkpoints"]
    # Exactly one checkpoint per token request, and each one points into its token.
    assert cps["by_reason"] == {"payload-mismatch": len(tokens)}
    for entry in summary["checkpoint_list"]:
        span = next(t["token_span"] for t in tokens if t["connection"] == entry["connection"])
        assert span[0] <= entry["divergence"]["offset"] < span[1]
    assert cps["flushes"] == cps["requested"]
    assert "flush" in summary["note"]
    assert "checkpoint here is a flush" in proc_stderr

    # Request latency as the client measured it, protected and unprotected, with every
    # sample in the histogram; the hold time's interval figures named as such.
    lat = summary["request_latency_ms"]
    prot, base = lat["protected"], lat["baseline"]
    assert prot["count"] == req["complete"]
    assert sum(n for _, n in prot["histogram"]) == prot["count"]
    assert base["failed"] == 0
    assert base["count"] > 0 and sum(n for _, n in base["histogram"]) == base["count"]
    assert prot["p50"] is not None and base["p50"] is not None
    assert "latency_ms" not in summary and "worst_interval_p99" in summary["hold_time_ms"]

    # Without a terminal: 100 columns, and it says why there is no live view.
    lines = proc_stderr.splitlines()
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
    assert any("the live view needs a terminal" in line for line in lines)
    # The checkpoints of one cause collapse; the headline and what to try next come last.
    if len(tokens) > 1:
        assert f"{len(tokens) - 1} more, same cause: token at offset" in proc_stderr
    assert sum(1 for line in lines if "first divergence" in line) == 1
    order = [next(i for i, line in enumerate(lines) if mark in line)
             for mark in ("checkpoint requests ─", "cleaned up", "colo-proxy demo: summary",
                          "request latency (client", "unprotected:", "try next:")]
    assert order == sorted(order), order
    assert "docs/qemu.md" in lines[-1]
    command = f"colo-proxy diff {captures}/primary.pcap {captures}/secondary.pcap"
    assert command in proc_stderr.replace(" \\\n     ", ""), "no diff command to copy"

    # The saved captures hold exactly the protected run's connections: nothing the
    # baseline left in the (stalled, so slower) secondary reached them, nor the datapath.
    assert "warning" not in proc_stderr
    assert [k for k in conns["other_flows"] if k.startswith("tcp")] == []
    ports = {role: _client_ports(captures / name)
             for role, name in (("primary", "primary.pcap"), ("secondary", "secondary.pcap"))}
    assert ports["primary"] == ports["secondary"]
    assert all(p < BASELINE_PORTS[0] for p in ports["secondary"]), sorted(ports["secondary"])
    # The saved captures are what `colo-proxy diff` reads, and it finds the same
    # divergences as the live datapath: the same checkpoints (connection, reason,
    # offset), one on each token connection, and no other connection diverged.
    diff = _diff_json(captures / "primary.pcap", captures / "secondary.pcap")
    assert diff["summary"]["connections"] == conns["total"] == len(ports["primary"])
    token_ports = sorted(t["local_port"] for t in tokens)
    diverged = sorted(int(c["connection"].rsplit(":", 1)[1]) for c in diff["checkpoints"])
    assert diverged == token_ports, (diff["summary"], token_ports)
    assert diff["summary"]["connections_diverged"] == len(tokens), diff["summary"]
    live = sorted((c["key"], c["reason"], c["divergence"]["offset"])
                  for c in summary["checkpoint_list"])
    offline = sorted((c["connection"], c["reason"], c["engine_offset"])
                     for c in diff["checkpoints"])
    assert offline == live

    if plotting:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert demo_run.leftovers() == ([], [])


def test_two_demos_with_one_prefix_one_refuses(demo_run: DemoRun) -> None:
    """`make demo` in two terminals: the second refuses with one line, touching
    nothing; the first runs to its end undisturbed."""
    first = subprocess.Popen(demo_run.argv("--duration", "6", "--plain", "--baseline", "1"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=demo_run.env)
    try:
        assert first.stdout is not None
        for line in first.stdout:
            if line.startswith("driving HTTP traffic"):
                break
        else:
            raise AssertionError("the first demo never started its traffic")
        second = subprocess.run(demo_run.argv("--duration", "6", "--plain"),
                                capture_output=True, text=True, env=demo_run.env,
                                timeout=120, check=False)
        rest, err = first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"colo-proxy: error: demo: prefix {demo_run.prefix!r} is in use by a running demo "
        f"(pid {first.pid}); try --prefix NAME"]
    assert second.stdout == ""
    assert first.returncode == 0, err[-3000:]
    assert "died" not in rest + err
    assert "try next:" in rest
    assert demo_run.leftovers() == ([], [])


def test_demo_after_a_crashed_run_cleans_up_its_leftovers(demo_run: DemoRun) -> None:
    """A demo SIGKILLed mid-run leaves namespaces and its children (each in a process
    group of its own); the next run with the prefix holds the lock, so it knows they
    are leftovers: it says so, removes them and runs."""
    crashed = subprocess.Popen(demo_run.argv("--duration", "60", "--plain"),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env=demo_run.env)
    assert crashed.stdout is not None
    for line in crashed.stdout:
        if line.startswith("[") and "requests" in line:
            break
    crashed.kill()
    crashed.wait()
    netns, pids = demo_run.leftovers()
    assert len(netns) == 5 and pids, "the crash left nothing behind: nothing to test"
    proc = subprocess.run(demo_run.argv("--duration", "2", "--plain", "--baseline", "0"),
                          capture_output=True, text=True, env=demo_run.env, timeout=180,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "removing a crashed demo's leftovers" in proc.stdout
    assert f"namespaces {demo_run.prefix}-client" in proc.stdout
    assert not set(pids) & set(_pids_tagged(demo_run.tag))
    assert demo_run.leftovers() == ([], [])


def _interrupt_midway(demo_run: DemoRun, signals: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(demo_run.argv("--duration", "60", "--plain"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=demo_run.env)
    assert proc.stdout is not None
    progress = 0
    for line in proc.stdout:
        if line.startswith("[") and "requests" in line:
            progress += 1
            if progress == 2:
                break
    assert progress == 2, "the demo never reported traffic"
    # The whole cast is up: services, datapath and driver live in our namespaces.
    netns, pids = demo_run.leftovers()
    assert len(netns) == 5 and len(pids) >= 5
    for i in range(signals):
        proc.send_signal(signal.SIGINT)
        if i + 1 < signals:
            time.sleep(0.3)
    proc.wait(timeout=60)
    return proc


def test_demo_sigint_cleans_up(demo_run: DemoRun) -> None:
    proc = _interrupt_midway(demo_run, signals=1)
    assert proc.returncode == 130
    assert proc.stderr is not None
    assert "interrupted" in proc.stderr.read()
    assert demo_run.leftovers() == ([], [])


def test_demo_second_sigint_leaves_no_debris(demo_run: DemoRun) -> None:
    proc = _interrupt_midway(demo_run, signals=2)
    assert proc.returncode == 130
    assert demo_run.leftovers() == ([], [])


def _stage_reached(proc: subprocess.Popen[str], demo_run: DemoRun, stage: str) -> None:
    """Return once the demo is in ``stage`` (it never gets further before the test
    reacts: see ``_stopped``)."""
    if stage in ("preflight", "topology"):
        # The probe namespace lives through the kernel checks, the client namespace
        # is the first one the topology build creates (and lives to the end).
        marks = {"preflight": ("-probe", "-client"), "topology": ("-client",)}[stage]
        deadline = time.monotonic() + 60
        while not any(n.endswith(marks) for n in _netns_with(demo_run.prefix)):
            assert proc.poll() is None, f"the demo exited before {stage}"
            assert time.monotonic() < deadline, f"the demo never reached {stage}"
            time.sleep(0.002)
        return
    assert proc.stdout is not None
    # "summary": the checkpoint explanations (the headline is printed after the
    # cleanup, when signals no longer interrupt anything).
    mark = {"services": "topology ", "traffic": "datapath ",
            "summary": "checkpoint requests ─"}[stage]
    for line in proc.stdout:
        if line.startswith(mark) or (stage == "summary" and mark in line):
            return
    raise AssertionError(f"the demo never reached {stage}")


@contextlib.contextmanager
def _stopped(proc: subprocess.Popen[str]) -> Iterator[None]:
    """The demo is stopped (SIGSTOP) in the block: a signal sent meanwhile is
    pending when it resumes, however late this test got the CPU."""
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("stage", ["preflight", "topology", "services", "traffic",
                                   "summary"])
def test_demo_sigint_storm_at_any_stage(demo_run: DemoRun, stage: str) -> None:
    """A user who keeps pressing Ctrl-C from some moment on: the first SIGINT
    interrupts, the others (every 10 ms until the demo exits) must neither cut the
    cleanup short nor kill the process by the default action."""
    duration = "3" if stage == "summary" else "60"
    proc = subprocess.Popen(demo_run.argv("--duration", duration, "--plain",
                                          "--token-interval", "0.5"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=demo_run.env)
    try:
        _stage_reached(proc, demo_run, stage)
        with _stopped(proc):
            proc.send_signal(signal.SIGINT)
        sent, deadline = 1, time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(signal.SIGINT)
            sent += 1
            time.sleep(0.01)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, f"{sent} SIGINTs at {stage}: {err[-2000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == "colo-proxy: interrupted"
    assert demo_run.leftovers() == ([], [])


def test_demo_not_root_is_one_line() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv")
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           *CLI, "demo"], capture_output=True, text=True, timeout=60,
                          check=False, cwd="/")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "colo-proxy: error: demo: must run as root (it creates network namespaces and "
        "netfilter rules); try: sudo make demo"]


@pytest.mark.parametrize("prefix", ["Bad_Name", "-lead", "../etc", "x" * 41])
def test_demo_bad_prefix_is_one_line_before_anything(prefix: str) -> None:
    proc = subprocess.run([*CLI, "demo", "--prefix", prefix], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"colo-proxy: error: demo: --prefix {prefix!r}: use 1-40 of a-z, 0-9, '-' "
        "(not starting with '-')"]
    # Checked first: no kernel probe ran with it, nothing to clean up.
    assert proc.stdout == ""


def _without_tc(tmp_path: Path) -> str:
    for tool in ("ip", "iptables"):  # no tc
        path = shutil.which(tool)
        assert path is not None
        (tmp_path / tool).symlink_to(path)
    return str(tmp_path)


def test_demo_missing_tool_is_one_line(tmp_path: Path, demo_run: DemoRun) -> None:
    env = {**demo_run.env, "PATH": _without_tc(tmp_path)}
    proc = subprocess.run(demo_run.argv(), capture_output=True, text=True, timeout=60,
                          check=False, env=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing tools: tc (Debian package iproute2)" in lines[0]
    assert demo_run.leftovers() == ([], [])


def test_demo_failing_early_leaves_a_running_demo_alone(tmp_path: Path,
                                                        demo_run: DemoRun) -> None:
    """A second demo with the same prefix that fails its preflight (not root, a tool
    missing) has created nothing: its cleanup must not remove the running one's
    namespaces."""
    running = f"{demo_run.prefix}-client"
    subprocess.run(["ip", "netns", "add", running], check=True)
    env = {**demo_run.env, "PATH": _without_tc(tmp_path)}
    proc = subprocess.run(demo_run.argv(), capture_output=True, text=True, timeout=60,
                          check=False, env=env)
    assert proc.returncode == 1 and "missing tools: tc" in proc.stderr
    assert demo_run.leftovers()[0] == [running]
