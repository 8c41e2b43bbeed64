"""The QMP checkpoint controller as a checkpoint policy of the seam.

``QmpCheckpointPolicy`` is a push-style policy (``BindablePolicy``,
colo_proxy/seam/control.py): the seam binds it when the datapath is built
(``QemuSocketDatapath(engine, settings, policy=policy)``), and from then on

* a checkpoint request of the engine reaches ``request(req)`` and becomes a
  request of the ``CheckpointController`` (x-checkpoint-delay over QMP);
* the controller's hooks are the seam's ``DatapathControl``: STOP fences,
  RESUME flushes (the seam counts the checkpoint done and writes its event),
  a RESUME that does not come in time unfences, COLO entry and exit switch
  comparison on and off (solo);
* with ``epoch=True`` (the default, what the agent runs) the policy installs an
  ``EpochGate`` as the seam's engine wrapper, so frames read after STOP are
  parked and enter the new epoch after the flush (epoch.py).  ``epoch=False``:
  no gate; the flush at RESUME covers every frame read before it (the race of
  issue 8), and outside COLO requests are answered by a flush.

``poll()`` never reports anything: completion is pushed.  Everything is called
on the datapath's asyncio loop, which the monitor and the controller share.
The controller's task is started by the owner once the monitor is connected
(``PrimaryAgent`` per QMP connection, or ``begin()``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from ..compare.model import CheckpointRequest
from ..seam import DatapathControl, Outcome
from .checkpoint import CheckpointController, CheckpointRecord, Hooks
from .config import Timeouts
from .epoch import EpochGate
from .qmp import Monitor


class _Unbound:
    """The controller's hooks until the seam binds the policy: nothing to drive."""

    def fence(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def unfence(self) -> None:
        pass

    def enter_solo(self) -> None:
        pass

    def enter_colo(self) -> None:
        pass


class QmpCheckpointPolicy:
    name = "agent"
    note = "COLO checkpoint done (STOP then RESUME on the primary's QMP)"
    retry_s: float | None = None
    """The controller retries on its own (no STOP within checkpoint_stop_s)."""

    def __init__(self, monitor: Monitor, *, epoch: bool = True,
                 timeouts: Timeouts | None = None, vm: str = "",
                 on_checkpoint: Callable[[CheckpointRecord], None] | None = None) -> None:
        t = timeouts or Timeouts()
        self.monitor = monitor
        self.epoch = epoch
        self.gate: EpochGate | None = None
        """The engine wrapper (after ``bind``, with ``epoch``)."""
        self.control: DatapathControl | None = None
        hooks: Hooks = _Unbound()
        self.controller = CheckpointController(
            monitor, hooks, stop_timeout_s=t.checkpoint_stop_s,
            resume_timeout_s=t.checkpoint_resume_s,
            min_interval_ms=t.min_checkpoint_interval_ms, on_checkpoint=on_checkpoint,
            name=vm)
        monitor.on_event = self.controller.on_event
        self._task: asyncio.Task[None] | None = None

    def bind(self, control: DatapathControl) -> None:
        """Called by the seam: drive this datapath (solo until COLO is seen)."""
        self.control = control
        if self.epoch:
            self.gate = EpochGate(control.engine, solo=True)
            control.wrap_engine(self.gate)
        self.controller.hooks = control

    def begin(self) -> None:
        """Start the controller's task (on the running loop, after ``monitor.connect()``),
        for an owner that does not start it itself."""
        if self._task is None:
            self._task = self.controller.start()

    def request(self, request: CheckpointRequest) -> None:
        self.controller.request(str(request.reason))

    def poll(self) -> Outcome | None:
        return None

    def stop(self) -> None:
        """The datapath exits: the seam ignores the controller's calls from now on."""

    async def aclose(self) -> None:
        """Stop the controller (and the task ``begin`` started)."""
        task, self._task = self._task, None
        await self.controller.close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
