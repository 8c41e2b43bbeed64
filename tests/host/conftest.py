"""Host tests: no test leaves a child process behind, also when it fails.

Every host test starts real processes (QEMU, datapaths, services in namespaces).
Their fixtures stop them; this one is the net under them: after each test, any
child of the pytest process started during the test and still running is killed
(its QEMU temporary directory removed), and a test that passed fails in teardown
for having left it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

_QEMU_DIR = re.compile(r"(/tmp/colo-qemu-[A-Za-z0-9_]+)/")


def _running_children() -> dict[int, str]:
    """pid -> command line of this process's children that have not exited."""
    me = os.getpid()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == me and state != "Z":
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


@pytest.fixture(autouse=True)
def _no_process_left(request: pytest.FixtureRequest) -> Iterator[None]:
    before = set(_running_children())
    yield
    left = {pid: cmd for pid, cmd in _running_children().items() if pid not in before}
    for pid, cmd in left.items():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        match = _QEMU_DIR.search(cmd)
        if match:
            shutil.rmtree(match.group(1), ignore_errors=True)
    report = getattr(request.node, "rep_call", None)
    if left and report is not None and report.passed:
        pytest.fail(f"the test left processes running (killed now): {left}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    report = yield
    if call.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
