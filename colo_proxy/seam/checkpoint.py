"""Checkpoint policies: what a checkpoint request turns into, and when it is done.

The engine asks for a checkpoint (``CheckpointRequest``) at most once until
``Engine.checkpoint_done``; the ``Seam`` passes each request to the datapath's one
policy object and polls it for the outcome.  The protocol
(``CheckpointPolicy``) is small on purpose, so that the QMP agent
(``colo_proxy/agent/``) can plug in as just another policy:

* ``request(req)``: a new request (the engine coalesces: never two without a
  ``done`` in between).  Must not block: start the work and return.
* ``poll() -> Outcome | None``: called by the datapath's loop on every
  iteration and timer tick (NFQUEUE: at least every 20 ms; qemu-socket: every
  20 ms and right after a completion message).  Return ``Outcome(done=True)``
  once the checkpoint is complete -- the seam then runs the flush
  (``Engine.checkpoint_done``: held primaries released in arrival order, held
  secondaries discarded, streams re-based).  ``Outcome(done=False,
  failed_rc=..)`` reports a failed attempt (event ``checkpoint-failed``); the
  policy keeps retrying on its own and everything stays held meanwhile.
  ``None``: nothing new.  Call it only from the datapath's loop thread (a
  policy that learns completion elsewhere -- a QMP event, a notify message --
  records it and returns it from its next ``poll``).
* ``stop()``: the datapath exits; end any work in progress (no more outcomes).

``name`` is the policy's name in the events (``flush``, ``cmd``, ``notify``,
``none``, ``agent``), ``note`` one line saying what "done" means with it.

Built in:

* ``FlushPolicy`` (``flush``): nothing to copy (the namespace "VMs" have no VM
  state), so a checkpoint is an immediate flush.
* ``CommandPolicy`` (``cmd``, ``--checkpoint-cmd CMD``): run ``sh -c CMD`` per
  request with ``COLO_REASON``, ``COLO_CONNECTION`` (the key's text form, empty
  when the request has no connection) and ``COLO_DETAIL`` in the environment;
  exit status 0 means the checkpoint is done.  A non-zero exit leaves everything
  held and the command is run again after ``retry_s``.
* ``HoldPolicy`` (``none``): no mechanism; requests are reported and held frames
  wait (until a completion the datapath learns itself, or exit).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from typing import Protocol

from ..compare.model import CheckpointRequest

ENV_REASON = "COLO_REASON"
ENV_CONNECTION = "COLO_CONNECTION"
ENV_DETAIL = "COLO_DETAIL"


@dataclass(frozen=True)
class Outcome:
    done: bool
    failed_rc: int | None = None
    note: str | None = None
    """Optional detail for the checkpoint-done / checkpoint-failed event."""


class CheckpointPolicy(Protocol):
    name: str
    note: str
    retry_s: float | None
    """Seconds between retries after a failure (None: the policy does not retry)."""

    def request(self, request: CheckpointRequest) -> None: ...

    def poll(self) -> Outcome | None: ...

    def stop(self) -> None: ...


class FlushPolicy:
    name = "flush"
    note = "no VM state to copy: the checkpoint is an immediate flush of held output"
    retry_s: float | None = None

    def __init__(self) -> None:
        self._pending = False

    def request(self, request: CheckpointRequest) -> None:
        self._pending = True

    def poll(self) -> Outcome | None:
        if not self._pending:
            return None
        self._pending = False
        return Outcome(done=True)

    def stop(self) -> None:
        self._pending = False


class HoldPolicy:
    name = "none"
    note = "no checkpoint mechanism configured: held frames wait"
    retry_s: float | None = None

    def request(self, request: CheckpointRequest) -> None:
        return None

    def poll(self) -> Outcome | None:
        return None

    def stop(self) -> None:
        return None


def command_env(request: CheckpointRequest) -> dict[str, str]:
    """The checkpoint command's environment for ``request``."""
    return dict(os.environ, **{
        ENV_REASON: str(request.reason),
        ENV_CONNECTION: str(request.key) if request.key is not None else "",
        ENV_DETAIL: request.detail,
    })


class CommandPolicy:
    name = "cmd"
    note = "checkpoint command exited 0"

    def __init__(self, command: str, retry_s: float = 1.0) -> None:
        self.command = command
        self.retry_s: float | None = retry_s
        self.runs = 0
        self._request: CheckpointRequest | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._retry_at: float | None = None

    @property
    def busy(self) -> bool:
        return self._request is not None

    def request(self, request: CheckpointRequest) -> None:
        self._request = request
        if self._proc is None:
            self._spawn()
        # else: a run for an earlier request is still going; its outcome answers this one.

    def _spawn(self) -> None:
        req = self._request
        assert req is not None
        self._retry_at = None
        self.runs += 1
        try:
            self._proc = subprocess.Popen(self.command, shell=True, env=command_env(req),
                                          stdin=subprocess.DEVNULL)
        except OSError:
            self._proc = None
            self._retry_at = time.monotonic() + (self.retry_s or 1.0)

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
        if self._request is not None:
            self._retry_at = time.monotonic() + (self.retry_s or 1.0)
        return Outcome(done=False, failed_rc=rc)

    def forget(self) -> None:
        """The checkpoint completed elsewhere: no retry; a run in progress may finish
        (its outcome is still reported by ``poll``)."""
        self._request = None
        self._retry_at = None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        self._request = None
        self._retry_at = None
