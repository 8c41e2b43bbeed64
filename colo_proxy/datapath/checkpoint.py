"""Checkpoint policies of the userspace datapaths (until the QMP agent exists).

* ``flush``: nothing to copy (the namespace "VMs" have no VM state), so a
  checkpoint is an immediate flush: held PVM output is released, held SVM
  output discarded, and the engine re-bases its streams.
* ``cmd``: run a shell command per request (environment ``COLO_REASON``,
  ``COLO_KEY``, ``COLO_DETAIL``); exit status 0 means the checkpoint is done and
  the flush follows.  A non-zero exit leaves everything held and the command is
  run again after ``retry_s``.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

from ..compare.model import CheckpointRequest


@dataclass
class Outcome:
    done: bool
    failed_rc: int | None = None


class FlushPolicy:
    name = "flush"
    note = "no VM state to copy: the checkpoint is an immediate flush of held output"

    def __init__(self) -> None:
        self._pending = False

    def start(self, request: CheckpointRequest) -> None:
        self._pending = True

    def poll(self) -> Outcome | None:
        if not self._pending:
            return None
        self._pending = False
        return Outcome(done=True)

    def stop(self) -> None:
        self._pending = False


class CommandPolicy:
    name = "cmd"
    note = "checkpoint command exited 0"

    def __init__(self, command: str, retry_s: float = 1.0) -> None:
        self.command = command
        self.retry_s = retry_s
        self._request: CheckpointRequest | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._retry_at: float | None = None

    def start(self, request: CheckpointRequest) -> None:
        self._request = request
        self._spawn()

    def _spawn(self) -> None:
        req = self._request
        assert req is not None
        env = dict(os.environ, COLO_REASON=str(req.reason), COLO_KEY=str(req.key or ""),
                   COLO_DETAIL=req.detail)
        self._retry_at = None
        self._proc = subprocess.Popen(self.command, shell=True, env=env,
                                      stdin=subprocess.DEVNULL)

    def poll(self) -> Outcome | None:
        if self._proc is None:
            if self._retry_at is not None and time.monotonic() >= self._retry_at:
                self._spawn()
            return None
        rc = self._proc.poll()
        if rc is None:
            return None
        self._proc = None
        if rc == 0:
            self._request = None
            return Outcome(done=True)
        self._retry_at = time.monotonic() + self.retry_s
        return Outcome(done=False, failed_rc=rc)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


CheckpointPolicy = FlushPolicy | CommandPolicy
