"""scripts/guest/check-dmesg.sh: which kernel log lines fail a guest run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

CHECK = Path(__file__).resolve().parents[2] / "scripts" / "guest" / "check-dmesg.sh"

CLEAN = """\
[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)
[    2.101000] nf_colo: loading out-of-tree module taints kernel.
[    2.102000] nf_colo: module verification failed: signature and/or required key \
missing - tainting kernel
[    3.000000] DEBUG_PAGEALLOC disabled; BUGS reported elsewhere are not ours
[    4.000000] Lockdown: python3: unsigned module loading is restricted; see man kernel_lockdown.7
[    0.000000] kasan: KernelAddressSanitizer initialized
[    0.100000] kmemleak: Kernel memory leak detector initialized (mem pool available: 31000)
[    0.200000] Lock dependency validator: Copyright (c) 2006 Red Hat, Inc., Ingo Molnar
[    0.300000] ... MAX_LOCKDEP_SUBCLASSES:  8
[   50.000000] kmemleak: 3 new suspected memory leaks (see /sys/kernel/debug/kmemleak)
"""


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    log = tmp_path / "dmesg.txt"
    log.write_text(text)
    return subprocess.run([str(CHECK), str(log)], capture_output=True, text=True, check=False)


def test_a_clean_log_passes(tmp_path: Path) -> None:
    result = check(tmp_path, CLEAN)
    assert result.returncode == 0
    assert result.stdout == ""


@pytest.mark.parametrize("line", [
    "[   10.8] WARNING: CPU: 0 PID: 1 at net/netlink/genetlink.c:100 genl_register+0x1/0x2",
    "[   11.0] BUG: kernel NULL pointer dereference, address: 0000000000000008",
    "[   12.0] kernel BUG at net/core/skbuff.c:42!",
    "[   13.0] INFO: task python3:123 blocked for more than 120 seconds.",
    "[   14.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
    "[   15.0] BUG: scheduling while atomic: python3/77/0x00000002",
    "[   16.0] refcount_t: underflow; use-after-free.",
    "[   17.0] Oops: 0000 [#1] PREEMPT SMP NOPTI",
    "[   18.0] general protection fault, probably for non-canonical address 0xdead",
    "[   19.0] Kernel panic - not syncing: Fatal exception",
    "[   20.0] UBSAN: array-index-out-of-bounds in colo_node.c:12:3",
    "[   21.0] list_del corruption. prev->next should be ffff, but was dead",
    # the debug kernel: lockdep, KASAN, kmemleak (OUT/kmemleak.txt), debugobjects
    "[   30.0] WARNING: possible circular locking dependency detected",
    "[   31.0] WARNING: inconsistent lock state",
    "[   32.0] WARNING: possible recursive locking detected",
    "[   33.0] WARNING: suspicious RCU usage",
    "[   34.0] WARNING: bad unlock balance detected!",
    "[   35.0] INFO: trying to register non-static key.",
    "[   36.0] BUG: KASAN: slab-use-after-free in buggy_uaf+0x4d/0x80 [colo_buggy]",
    "unreferenced object 0xffff888104a5c800 (size 128):",
    "[   37.0] ODEBUG: free active (active state 0) object: 00000000deadbeef type: timer_list",
    "[   38.0] kmemleak: Kernel memory leak detector disabled",
    "[   39.0] turning off the locking correctness validator.",
    "[   40.0] Disabling lock debugging due to kernel taint",
])
def test_a_bad_line_fails_and_is_printed(tmp_path: Path, line: str) -> None:
    result = check(tmp_path, CLEAN + line + "\n")
    assert result.returncode == 1
    assert result.stdout.strip() == line
