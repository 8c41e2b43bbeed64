"""Smoke run of the QEMU benchmarks: they finish and print their tables (no timing asserts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.qemu


def _run(script: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _rows(out: str, title: str) -> list[list[str]]:
    lines = out[out.index(title):].splitlines()
    end = next((i for i, ln in enumerate(lines[2:], 2) if ln.startswith("#")), len(lines))
    table = [ln for ln in lines[1:end] if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in table[2:]]


def test_compare_quick_prints_tables() -> None:
    out = _run("compare.py")
    rows = _rows(out, "### Throughput")
    assert [r[0] for r in rows] == ["TCP 1400 B, 1 flow", "TCP 64 B, 1 flow",
                                    "UDP 64 B, 1000 flows"]
    assert all(r[-1] == "0" for r in rows), rows  # no frame lost by either side
    assert all(r[5].endswith("x") or r[5].startswith("n/a") for r in rows)
    memory = {r[0]: r[1] for r in _rows(out, "### Memory")}
    assert memory["tracemalloc bytes per tracked connection"].endswith("conns)")


def test_qemu_socket_quick_prints_table() -> None:
    out = _run("qemu_socket.py")
    rows = _rows(out, "### qemu-socket datapath vs colo-compare")
    assert len(rows) == 3
    assert all(r[-1] == "0" for r in rows), rows
