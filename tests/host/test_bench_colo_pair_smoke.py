"""Smoke run of bench/colo_pair.py --quick: it finishes, cleans up and prints its tables
with every workload and both comparators (structure only, never timing)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = ["HTTP, new connections", "HTTP keep-alive", "TCP echo, 1 connection",
             "UDP bursts", "random-token page"]

pytestmark = [pytest.mark.root, pytest.mark.qemu]


def _requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, taps)"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not installed"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    return None


def _rows(out: str, title: str) -> list[list[str]]:
    lines = out[out.index(title):].splitlines()
    end = next((i for i, ln in enumerate(lines[2:], 2) if ln.startswith("#")), len(lines))
    table = [ln for ln in lines[1:end] if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in table[2:]]


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_colo_pair_quick_prints_tables() -> None:
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    before = _namespaces()
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "colo_pair.py"), "--quick"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert re.search(r"start: .*load average [\d.]+ [\d.]+ [\d.]+", out), out[:500]

    checkpoints = _rows(out, "### Checkpoints per workload")
    assert [r[0] for r in checkpoints] == WORKLOADS
    for row in checkpoints:
        assert int(row[1]) > 0
        assert row[2].isdigit() and row[3].isdigit(), row  # one rep: plain counts
        assert re.fullmatch(r"\d+ / \d+", row[5]), row
    tokens = checkpoints[-1]
    # Every token page diverges: both comparators ask for at least one checkpoint.
    assert int(tokens[2]) >= 1 and int(tokens[3]) >= 1, tokens
    assert "payload-mismatch" in tokens[4], tokens

    latency = _rows(out, "### Client request latency")
    assert [r[0] for r in latency] == WORKLOADS
    for row in latency:
        assert re.fullmatch(r"\d+\.\d\d", row[1]) and re.fullmatch(r"\d+\.\d\d", row[2]), row
        assert re.fullmatch(r"\d+\.\d\dx", row[3]), row

    release = _rows(out, "### Match-to-release latency")
    assert [r[0] for r in release] == WORKLOADS
    for row in release:
        assert row[-1] == "not observable"
    # Deterministic HTTP is released by colo-proxy after a match: the histogram saw it.
    assert int(release[0][1]) > 0 and release[0][2].startswith("<="), release[0]

    assert "### Goals" in out
    left = {ns for ns in _namespaces() - before if ns.startswith("cp")}
    assert not left, f"namespaces left behind: {left}"
