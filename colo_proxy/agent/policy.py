"""The QMP checkpoint controller as a checkpoint policy of today's interface
(colo_proxy/datapath/checkpoint.py: ``start(request)``, ``poll() -> Outcome | None``,
``stop()``), for a datapath that runs on an asyncio loop.

Two ways to plug it in:

* **With an EpochGate** (``QmpCheckpointPolicy(monitor, gate=gate)``, what the
  agent does): the controller fences and flushes through the gate at STOP and
  RESUME, on the loop, and the gate hands the releases to the datapath's
  decision handler.  ``poll()`` then never reports a flush (the gate already
  did it), only failures, so the datapath must not flush again.
* **Without** (``gate=None``): ``poll()`` reports ``Outcome(done=True)`` once per
  checkpoint done (every STOP -> RESUME in COLO), and the datapath flushes when
  it polls.  That is the pre-agent behaviour: a frame read between the SVM's
  resume and that poll is misfiled (the race of issue 8).  Use it only where
  the datapath cannot route frames through a gate.

The seam needs, to use the first way without a subclass: ``request(req)`` as the
policy entry point, the engine wrapper (or ``Engine.fence()`` /
``checkpoint_done(upto=...)``), and a public decision handler for ``emit``.
"""

from __future__ import annotations

import asyncio
import contextlib

from ..compare.model import CheckpointRequest
from ..datapath.checkpoint import Outcome
from .checkpoint import CheckpointController
from .config import Timeouts
from .epoch import EpochGate
from .qmp import Monitor


class _CountingHooks:
    """Hooks without a gate: count the checkpoints done for poll()."""

    def __init__(self) -> None:
        self.done = 0
        self.in_colo = False

    def fence(self) -> None:
        pass

    def flush(self) -> None:
        self.done += 1

    def unfence(self) -> None:
        pass

    def enter_solo(self) -> None:
        self.in_colo = False
        self.done += 1  # nothing to compare with: release what is held

    def enter_colo(self) -> None:
        self.in_colo = True


class QmpCheckpointPolicy:
    name = "qmp"
    note = "COLO checkpoint done (STOP then RESUME on the primary's QMP)"

    def __init__(self, monitor: Monitor, *, gate: EpochGate | None = None,
                 timeouts: Timeouts | None = None) -> None:
        t = timeouts or Timeouts()
        self.monitor = monitor
        self.gate = gate
        self._counting = _CountingHooks() if gate is None else None
        hooks = gate if gate is not None else self._counting
        assert hooks is not None
        self.controller = CheckpointController(
            monitor, hooks, stop_timeout_s=t.checkpoint_stop_s,
            resume_timeout_s=t.checkpoint_resume_s,
            min_interval_ms=t.min_checkpoint_interval_ms)
        monitor.on_event = self.controller.on_event
        self._task: asyncio.Task[None] | None = None

    def begin(self) -> None:
        """Start the controller (on the running loop), after ``monitor.connect()``."""
        if self._task is None:
            self._task = self.controller.start()

    def start(self, request: CheckpointRequest) -> None:
        """A checkpoint request; call on the loop the controller runs on."""
        self.begin()
        self.controller.request(str(request.reason))

    def poll(self) -> Outcome | None:
        counting = self._counting
        if counting is not None and counting.done:
            counting.done -= 1
            return Outcome(done=True)
        return None

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await self.controller.close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
