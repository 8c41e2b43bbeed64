"""The checkpoint controller on the primary (KVM COLO, over QMP).

What it does, and the rules (docs/operations.md repeats them):

* **Request.**  A checkpoint request from the datapath becomes
  ``migrate-set-parameters {"x-checkpoint-delay": N}`` on the primary with N the
  *current* value (``query-migrate-parameters`` right before), so the operator's
  period is unchanged; QEMU checkpoints at once and re-arms its timer.
* **COLO check.**  Before the first request, and whenever COLO was not known to
  be running, ``query-colo-status`` is read.  Outside COLO (mode is not
  ``primary``) the request is answered at once by the gate in solo mode: there
  is no secondary to compare with, so held primaries are released (counted as
  ``outside_colo``).  COLO is entered at the STOP/RESUME pair that completes the
  migration; the agent re-reads the status at every RESUME while not in COLO.
* **Coalescing.**  While a request is in flight (sent, STOP not yet seen) more
  requests are merged into it: the flush at its RESUME covers every frame read
  before its STOP.  A request within ``min_interval_ms`` of the previous RESUME
  waits for the rest of that interval (default 20 ms), so a burst of mismatches
  after a checkpoint costs one more checkpoint, not one each.
* **Retry.**  No STOP within ``stop_timeout_s`` after QEMU acknowledged the
  command: the command is sent again (logged, counted).  A command timeout or
  error is retried the same way.  A command that timed out may still have run:
  the STOP that follows counts whenever it comes.
* **Done.**  Every STOP then RESUME while in COLO is a checkpoint done,
  requested or periodic: STOP fences the epoch, RESUME flushes it (epoch.py).
* **Times.**  Each checkpoint records request, command sent, STOP, RESUME and
  flush (monotonic seconds); the last 256 are kept and logged at debug.
* **Slow QMP.**  Everything is asynchronous; a 1 s answer delays only that
  request.  Events are handled as they arrive, independently of commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .qmp import Monitor, QmpError

log = logging.getLogger("colo_proxy.agent.checkpoint")


class Hooks(Protocol):
    """What the controller needs from the datapath: the seam's ``DatapathControl``
    (colo_proxy/seam/control.py), bound by the agent's policy (policy.py)."""

    def fence(self) -> None: ...

    def flush(self) -> None: ...

    def unfence(self) -> None: ...

    def enter_solo(self) -> None: ...

    def enter_colo(self) -> None: ...


@dataclass
class CheckpointRecord:
    """Monotonic times (s) of one checkpoint; None where it did not happen."""

    reasons: list[str] = field(default_factory=list)
    requested: float | None = None
    sent: float | None = None
    stop: float | None = None
    resume: float | None = None
    flushed: float | None = None
    retries: int = 0

    @property
    def periodic(self) -> bool:
        return self.requested is None

    def as_dict(self) -> dict[str, Any]:
        def ms(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round((b - a) * 1000.0, 3)

        return {"reasons": self.reasons, "periodic": self.periodic, "retries": self.retries,
                "request_to_stop_ms": ms(self.requested, self.stop),
                "stop_to_resume_ms": ms(self.stop, self.resume),
                "resume_to_flush_ms": ms(self.resume, self.flushed),
                "request_to_flush_ms": ms(self.requested, self.flushed)}


@dataclass
class ControllerCounters:
    requests: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    coalesced: int = 0
    commands_sent: int = 0
    retries: int = 0
    command_errors: int = 0
    checkpoints_done: int = 0
    requested_done: int = 0
    periodic_done: int = 0
    outside_colo: int = 0
    resume_timeouts: int = 0
    colo_entries: int = 0
    colo_exits: int = 0


class CheckpointController:
    """Drives checkpoints on the primary's monitor; events come through ``on_event``."""

    def __init__(self, monitor: Monitor, hooks: Hooks, *, stop_timeout_s: float = 1.0,
                 resume_timeout_s: float = 5.0, min_interval_ms: float = 20.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_checkpoint: Callable[[CheckpointRecord], None] | None = None,
                 name: str = "") -> None:
        self.name = name
        self._p = f"{name}: " if name else ""
        self.monitor = monitor
        self.hooks = hooks
        self.stop_timeout_s = stop_timeout_s
        self.resume_timeout_s = resume_timeout_s
        self.min_interval_s = min_interval_ms / 1000.0
        self.clock = clock
        self.on_checkpoint = on_checkpoint
        self.counters = ControllerCounters()
        self.history: deque[CheckpointRecord] = deque(maxlen=256)
        self.in_colo = False
        self.exit_reason: str | None = None
        """The reason of the last COLO_EXIT (``error``: QEMU waits for a failover command)."""
        self.stopped = False
        self._wanted: CheckpointRecord | None = None
        """A request not yet covered by a STOP."""
        self._current: CheckpointRecord | None = None
        """The checkpoint between STOP and RESUME."""
        self._wake = asyncio.Event()
        self._last_resume = -1e9
        self._task: asyncio.Task[None] | None = None
        self._resume_timer: asyncio.TimerHandle | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- inputs ----------------------------------------------------------------

    def request(self, reason: str) -> None:
        """A checkpoint request from the datapath (never blocks)."""
        c = self.counters
        c.requests += 1
        c.by_reason[reason] = c.by_reason.get(reason, 0) + 1
        if self._wanted is not None:
            c.coalesced += 1
            self._wanted.reasons.append(reason)
            return
        self._wanted = CheckpointRecord(reasons=[reason], requested=self.clock())
        self._wake.set()

    def on_event(self, name: str, data: dict[str, Any], at: float) -> None:
        if name == "STOP":
            self._on_stop(at)
        elif name == "RESUME":
            self._on_resume(at)
        elif name == "COLO_EXIT":
            self._on_colo_exit(data)

    def _on_stop(self, at: float) -> None:
        if self.stopped:
            return
        self.stopped = True
        # Any request not yet covered is covered by this checkpoint, sent or not (a
        # periodic one included): its frames were read before this STOP.
        rec = self._wanted or CheckpointRecord()
        self._wanted = None
        self._wake.set()
        rec.stop = at
        self._current = rec
        if self.in_colo:
            self.hooks.fence()
            loop = asyncio.get_running_loop()
            self._resume_timer = loop.call_later(self.resume_timeout_s, self._resume_overdue)

    def _on_resume(self, at: float) -> None:
        if not self.stopped:
            return
        self.stopped = False
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        rec = self._current or CheckpointRecord()
        self._current = None
        rec.resume = at
        self._last_resume = at
        if self.in_colo:
            self._done(rec)
        else:
            # The STOP/RESUME that completes the migration enters COLO: check.
            self._start_status_check(rec)
        if self._wanted is not None:
            self._wake.set()

    def _done(self, rec: CheckpointRecord) -> None:
        self.hooks.flush()
        rec.flushed = self.clock()
        c = self.counters
        c.checkpoints_done += 1
        if rec.periodic:
            c.periodic_done += 1
        else:
            c.requested_done += 1
        self.history.append(rec)
        log.debug("%scheckpoint done: %s", self._p, rec.as_dict())
        if self.on_checkpoint is not None:
            self.on_checkpoint(rec)

    def _resume_overdue(self) -> None:
        self._resume_timer = None
        if not self.stopped:
            return
        self.counters.resume_timeouts += 1
        log.warning("%scheckpoint: STOP without RESUME for %.1f s; frames read since STOP "
                    "are compared without a flush (held frames stay held)", self._p,
                    self.resume_timeout_s)
        self.hooks.unfence()

    def _on_colo_exit(self, data: dict[str, Any]) -> None:
        self.counters.colo_exits += 1
        self.exit_reason = str(data.get("reason"))
        log.warning("%sCOLO_EXIT mode=%s reason=%s: comparison stops, held output is "
                    "released", self._p, data.get("mode"), data.get("reason"))
        self.leave_colo()

    def leave_colo(self) -> None:
        """Failover or COLO_EXIT or QEMU gone: no comparison from now on."""
        self.in_colo = False
        self.stopped = False
        self._current = None
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        self.hooks.enter_solo()
        if self._wanted is not None:
            self._wanted = None
            self.counters.outside_colo += 1

    def _start_status_check(self, rec: CheckpointRecord | None) -> None:
        if self._status_task is not None and not self._status_task.done():
            return
        self._status_task = asyncio.get_running_loop().create_task(self._status_check(rec))

    async def _status_check(self, rec: CheckpointRecord | None) -> None:
        mode = await self._colo_mode()
        if mode == "primary" and not self.in_colo:
            self.in_colo = True
            self.counters.colo_entries += 1
            self.hooks.enter_colo()
            log.info("%sCOLO running (primary): comparing from now on", self._p)

    async def _colo_mode(self) -> str | None:
        try:
            status = await self.monitor.execute("query-colo-status")
        except QmpError as exc:
            log.warning("%squery-colo-status failed: %s", self._p, exc)
            return None
        return str(status.get("mode"))

    # -- the request loop ------------------------------------------------------

    async def run(self) -> None:
        """Serve requests until ``close()``."""
        await self._status_check(None)
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            # Between STOP and RESUME a request waits: RESUME wakes this loop again.
            while self._wanted is not None and not self._closed and not self.stopped:
                await self._serve(self._wanted)

    async def _serve(self, rec: CheckpointRecord) -> None:
        wait = self._last_resume + self.min_interval_s - self.clock()
        if wait > 0:
            await asyncio.sleep(wait)
        if rec is not self._wanted:
            return
        if not self.in_colo:
            await self._status_check(None)
        if not self.in_colo:
            self._wanted = None
            self.counters.outside_colo += 1
            log.info("%scheckpoint request outside COLO (%s): released held output, no VM "
                     "checkpoint", self._p, ", ".join(rec.reasons))
            self.hooks.enter_solo()
            return
        try:
            params = await self.monitor.execute("query-migrate-parameters")
            delay = int(params["x-checkpoint-delay"])
            if rec is not self._wanted or self.stopped:
                return
            rec.sent = rec.sent or self.clock()
            self.counters.commands_sent += 1
            await self.monitor.execute("migrate-set-parameters",
                                       {"x-checkpoint-delay": delay})
        except QmpError as exc:
            self.counters.command_errors += 1
            log.warning("%scheckpoint request: %s; retrying in %.1f s", self._p, exc,
                        self.stop_timeout_s)
            rec.sent = rec.sent or self.clock()
            await self._await_stop(rec)
            return
        await self._await_stop(rec)

    async def _await_stop(self, rec: CheckpointRecord) -> None:
        deadline = self.clock() + self.stop_timeout_s
        while rec is self._wanted and not self._closed:
            left = deadline - self.clock()
            if left <= 0:
                rec.retries += 1
                self.counters.retries += 1
                log.warning("%scheckpoint request: no STOP %.1f s after x-checkpoint-delay; "
                            "sending it again", self._p, self.stop_timeout_s)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)
            self._wake.clear()

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self.run())
        return self._task

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        for task in (self._task, self._status_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._resume_timer is not None:
            self._resume_timer.cancel()
