"""QmpLink.healthy: what an agent tells its peer before its QEMU answers.

The peer fails over on an authenticated "unhealthy", so an agent that starts
before its QEMU must say "unknown" for the grace period, not "unhealthy" (the
end-to-end pair failed over at COLO entry when the primary agent's first QMP
retry came a second after the secondary entered COLO).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from colo_proxy.agent.qmp import Monitor, QmpLink


async def _never() -> None:
    await asyncio.Event().wait()


def _link(path: Path, grace_s: float) -> QmpLink:
    return QmpLink(Monitor(str(path), "t/qmp"), "t", _never, retry_s=0.02, grace_s=grace_s)


def test_unknown_during_the_grace_then_unhealthy(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    link = _link(tmp_path / "absent.qmp", grace_s=0.3)
    seen: list[bool | None] = []

    async def scenario() -> None:
        assert link.healthy is None                      # not started
        task = asyncio.get_running_loop().create_task(link.run())
        await asyncio.sleep(0.1)
        seen.append(link.healthy)                        # still in the grace
        await asyncio.sleep(0.4)
        seen.append(link.healthy)                        # the grace is over
        link.stop()
        await asyncio.wait_for(task, 2.0)

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    assert seen == [None, False]
    unavailable = [r for r in caplog.records if "QMP unavailable" in r.getMessage()]
    assert len(unavailable) == 1                         # one line per outage, not per retry


def test_stop_ends_run_while_retrying(tmp_path: Path) -> None:
    link = _link(tmp_path / "absent.qmp", grace_s=10.0)

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(link.run())
        await asyncio.sleep(0.05)
        link.stop()
        await asyncio.wait_for(task, 2.0)

    asyncio.run(scenario())
    assert link.healthy is None


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.WARNING)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _mode_warnings(tmp_path: Path, dir_mode: int, sock_mode: int) -> list[str]:
    """Monitor.connect on a real unix socket file (bound, not listening: refused)."""
    import socket

    from colo_proxy.agent.qmp import QmpUnavailable

    where = tmp_path / f"d{dir_mode:o}-s{sock_mode:o}"
    where.mkdir()
    path = where / "agent.qmp"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    records: list[logging.LogRecord] = []
    handler = _Keep(records)
    logger = logging.getLogger("colo_proxy.agent.qmp")
    logger.addHandler(handler)
    try:
        sock.bind(str(path))
        os.chmod(path, sock_mode)
        os.chmod(where, dir_mode)
        monitor = Monitor(str(path), "t/qmp", connect_timeout_s=2.0)
        for _ in range(2):                              # warned once, not per attempt
            with pytest.raises(QmpUnavailable):
                asyncio.run(monitor.connect())
    finally:
        logger.removeHandler(handler)
        sock.close()
        os.chmod(where, 0o700)
        path.unlink(missing_ok=True)
    return [r.getMessage() for r in records
            if r.levelno == logging.WARNING and "QMP socket" in r.getMessage()]


ADVICE = ("whoever connects controls the VM; keep it in a directory only QEMU's and the "
          "agent's users may enter and write (install -d -m 0700 /run/colo), or start QEMU "
          "with umask 077 (docs/operations.md)")


def test_qmp_socket_reachable_by_others_is_one_warning(tmp_path: Path) -> None:
    import grp

    group = grp.getgrgid(os.getegid()).gr_name
    assert _mode_warnings(tmp_path, 0o755, 0o600) == []
    path = tmp_path / "d755-s660" / "agent.qmp"
    assert _mode_warnings(tmp_path, 0o755, 0o660) == [
        f"t/qmp: QMP socket {path}: writable by the members of group {group} (mode 0660, "
        f"directory 0755): {ADVICE}"]
    path = tmp_path / "d755-s666" / "agent.qmp"
    assert _mode_warnings(tmp_path, 0o755, 0o666) == [
        f"t/qmp: QMP socket {path}: writable by every local user (mode 0666, directory "
        f"0755): {ADVICE}"]


def test_qmp_socket_directory_decides(tmp_path: Path) -> None:
    # A directory only its owner may enter shuts everyone else out, whatever the socket.
    assert _mode_warnings(tmp_path, 0o700, 0o666) == []
    assert _mode_warnings(tmp_path, 0o750, 0o660) != []   # same group: it may enter
    # Others may replace the socket in a writable directory, unless it is sticky.
    (line,) = _mode_warnings(tmp_path, 0o777, 0o600)
    assert (f"its directory {tmp_path / 'd777-s600'} (mode 0777, no sticky bit) lets its "
            "group and others replace the socket") in line
    (line,) = _mode_warnings(tmp_path, 0o777, 0o666)      # both reasons, one line
    assert "writable by every local user" in line and "replace the socket" in line
    assert _mode_warnings(tmp_path, 0o1777, 0o600) == []
