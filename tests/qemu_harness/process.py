"""Run one QEMU process with a QMP socket: start, wait until ready, measure, stop.

Used by the tests and benchmarks that drive a real QEMU (colo-compare, filter-redirector
feeders).  ``start`` returns only once QEMU answers on QMP, which means its main loop
runs and every ``-object`` on the command line exists.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from colo_proxy.errors import ColoError

QEMU_BINARY = "qemu-system-x86_64"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError as exc:
        raise ColoError(f"cannot read CPU time of process {pid}: {exc}") from None
    # The command name (field 2) may contain spaces; fields after it are positional.
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def process_rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class QemuProcess:
    """A QEMU child process plus its QMP monitor.  Use as a context manager."""

    def __init__(self, args: list[str], binary: str = QEMU_BINARY,
                 start_timeout: float = 20.0) -> None:
        if shutil.which(binary) is None:
            raise ColoError(f"{binary} not found (apt-get install qemu-system-x86)")
        self.binary = binary
        self.args = list(args)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: Any = None
        self._dir = tempfile.mkdtemp(prefix="colo-qemu-")
        self.qmp_path = os.path.join(self._dir, "qmp.sock")
        self.log_path = os.path.join(self._dir, "qemu.log")

    def command_line(self) -> list[str]:
        return [self.binary, "-M", "none", "-nodefaults", "-display", "none",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off", *self.args]

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ColoError("QEMU is not running")
        return self.proc.pid

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> QemuProcess:
        from qemu.qmp.legacy import QEMUMonitorProtocol
        from qemu.qmp.protocol import ConnectError

        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command_line(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise ColoError(f"QEMU exited with status {self.proc.returncode}: "
                                f"{self.log().strip()[-500:]}")
            if os.path.exists(self.qmp_path):
                qmp = QEMUMonitorProtocol(self.qmp_path)
                try:
                    qmp.connect()
                except (OSError, ConnectError):
                    # The socket file exists a moment before QEMU listens on it.
                    qmp.close()
                else:
                    self.qmp = qmp
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise ColoError(f"QEMU did not answer on QMP within {self.start_timeout} s")
            time.sleep(0.02)
        self.qmp.cmd("query-status")
        return self

    def cmd(self, name: str, **args: object) -> Any:
        if self.qmp is None:
            raise ColoError("QEMU QMP is not connected")
        return self.qmp.cmd(name, **args)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return process_rss_bytes(self.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Terminate QEMU (SIGTERM, then SIGKILL) and remove its temporary directory."""
        if self.qmp is not None:
            with contextlib.suppress(Exception):  # best effort while tearing down
                self.qmp.close()
            self.qmp = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> QemuProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
