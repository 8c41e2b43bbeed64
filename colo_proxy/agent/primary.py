"""The primary host's agent for one VM: datapath + QMP monitor + checkpoint controller.

The datapath is the plain qemu-socket datapath with the agent's checkpoint
policy plugged into its seam (policy.py): the seam binds it, it installs the
epoch gate, and the controller drives fence/flush/solo through the seam.
SIGTERM/SIGINT belong to the host process (runner.py), not to the datapath.

Lifecycle and faults (each has one log line, docs/operations.md "Log lines"):

* the QMP socket missing or refusing: "QMP unavailable: ..." once, then retried
  every ``retry_s``; the datapath runs solo meanwhile (there is no COLO to
  compare for, so nothing is held);
* QMP closed (QEMU exited or was killed): "QMP connection closed"; comparison
  stops and everything held is released (solo), then the monitor is retried;
* a slow monitor: commands time out after ``timeouts.qmp_command_s`` and are
  retried; events keep flowing;
* the agent restarted: it reconnects, reads ``query-colo-status`` and compares
  again from the next checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ..compare.engine import Engine
from ..datapath.qemu_socket import QemuSocketDatapath, QemuSocketSettings
from .checkpoint import CheckpointRecord
from .config import Timeouts
from .epoch import EpochGate
from .failover import Commands, FailoverResult, primary_continues
from .policy import QmpCheckpointPolicy
from .qmp import Monitor, QmpLink

log = logging.getLogger("colo_proxy.agent.primary")


class PrimaryAgent:
    def __init__(self, name: str, qmp_path: str, settings: QemuSocketSettings, engine: Engine,
                 *, timeouts: Timeouts | None = None, retry_s: float = 1.0,
                 failover_before: Commands = ()) -> None:
        self.failover_before = failover_before
        self.name = name
        self.timeouts = t = timeouts or Timeouts()
        self.retry_s = retry_s
        self.monitor = Monitor(qmp_path, f"{name}/qmp", connect_timeout_s=t.qmp_connect_s,
                               command_timeout_s=t.qmp_command_s)
        self.policy = QmpCheckpointPolicy(self.monitor, timeouts=t, vm=name,
                                          on_checkpoint=self._checkpointed)
        self.controller = self.policy.controller
        self.datapath = QemuSocketDatapath(engine, settings, policy=self.policy)
        gate = self.policy.gate
        assert gate is not None  # bound by the datapath's seam
        self.gate: EpochGate = gate
        self.monitor.on_closed = self._qmp_closed
        self.link = QmpLink(self.monitor, name, self._session, retry_s=retry_s)
        self.failed_over = False
        self._tasks: list[asyncio.Task[Any]] = []

    def _checkpointed(self, rec: CheckpointRecord) -> None:
        log.debug("%s: checkpoint %s", self.name, rec.as_dict())

    @property
    def qemu_healthy(self) -> bool | None:
        """What the heartbeat tells the peer: our QEMU answers on QMP (QmpLink.healthy)."""
        return self.link.healthy

    def _qmp_closed(self, reason: str) -> None:
        log.warning("%s: QMP connection closed (%s): comparison stops, held output released",
                    self.name, reason)
        self.controller.leave_colo()

    async def _session(self) -> None:
        """While QMP is connected: the checkpoint controller serves requests."""
        await self.controller.start()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.datapath.run(handle_signals=False),
                                        name=f"{self.name}-datapath"),
                       loop.create_task(self.link.run(), name=f"{self.name}-qmp")]
        await asyncio.sleep(0)

    async def failover(self) -> FailoverResult:
        """The secondary is dead: leave COLO, release everything, run alone."""
        self.failed_over = True
        result = await primary_continues(self.monitor, self.failover_before)
        self.controller.leave_colo()
        return result

    async def stop(self) -> None:
        self.link.stop()
        self.datapath.stop()
        await self.controller.close()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 10.0)
        await self.monitor.close()
