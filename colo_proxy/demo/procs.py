"""Child processes of the demo: each in its own process group (so a terminal's
Ctrl-C reaches only the demo, which then stops them in order), their stdout read
line by line on a thread, their stderr kept in a log file for error messages."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO


class Child:
    """One child process started with ``start_new_session`` (pgid == pid)."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path,
                 on_line: Callable[[str, str], None] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self._log, start_new_session=True, text=True, bufsize=1)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._on_line = on_line
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            if self._on_line is not None:
                self._on_line(self.name, line)
            else:
                self.lines.put(line)
        self.lines.put(None)

    def wait_line(self, timeout: float) -> str | None:
        """Next stdout line, or None at end of output / after ``timeout`` seconds."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def running(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self, lines: int = 3) -> str:
        """The last lines the child wrote to stderr, joined with `` | ``."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        tail = [line.strip() for line in text.strip().splitlines()[-lines:]]
        return " | ".join(line for line in tail if line)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the child's whole process group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)

    def stop(self, grace: float = 3.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; reap it."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        # Whatever is left of the group (the leader exited, helpers may not have).
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)
        self._reader.join(timeout=grace)
        self._log.close()
        return self.proc.returncode


def netns_pids(netns: str) -> list[int]:
    """Processes living in the named network namespace (what ``ip netns pids`` does,
    without a child process: a terminal's Ctrl-C would reach that child too)."""
    try:
        target = os.stat(os.path.join("/run/netns", netns))
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            pids.append(int(entry))
    return pids


def kill_netns_pids(netns: str) -> int:
    """SIGKILL every process living in the named network namespace (left over by a
    crashed run, or a grandchild that left its process group); returns how many
    there were."""
    pids = [pid for pid in netns_pids(netns) if pid != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)
