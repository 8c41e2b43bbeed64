"""bench/secondary.py (make bench-sec) in small: it runs to the end in the guest kernel,
checks on its own that the translated mode translated every frame that arrived and the
others none, prints both tables, and leaves no namespace behind.  Its figures are not
asserted (no timed asserts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from colo_env import insmod

pytestmark = pytest.mark.kernel

BENCH = Path(__file__).resolve().parents[2] / "bench" / "secondary.py"


def netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_bench_secondary_runs(colo_ko: Path) -> None:
    insmod(colo_ko)
    before = netns_list()
    res = subprocess.run(
        [sys.executable, str(BENCH), "--reps", "1", "--frames", "2000", "--conns", "50"],
        capture_output=True, text=True, check=False, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "### SVM -> forward link" in res.stdout, res.stdout
    assert "| 50 (of 50 handshakes) |" in res.stdout, res.stdout
    assert "goal translated >= 0.95x untranslated:" in res.stdout
    assert netns_list() == before


def test_bench_secondary_refuses_bad_input(colo_ko: Path) -> None:
    res = subprocess.run([sys.executable, str(BENCH), "--sizes", "64,x"],
                         capture_output=True, text=True, check=False)
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == ["bench-sec: --sizes: not a list of numbers: 64,x"]
