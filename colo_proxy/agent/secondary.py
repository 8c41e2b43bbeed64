"""The secondary host's agent for one VM: its QEMU's monitor, and the takeover."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from .config import Timeouts
from .failover import Commands, FailoverResult, secondary_takeover
from .qmp import Monitor, QmpError, QmpLink

log = logging.getLogger("colo_proxy.agent.secondary")


class SecondaryAgent:
    def __init__(self, name: str, qmp_path: str, redirectors: tuple[str, ...], *,
                 timeouts: Timeouts | None = None, retry_s: float = 1.0,
                 failover_before: Commands = ()) -> None:
        self.failover_before = failover_before
        self.name = name
        t = timeouts or Timeouts()
        self.redirectors = redirectors
        self.retry_s = retry_s
        self.monitor = Monitor(qmp_path, f"{name}/qmp", connect_timeout_s=t.qmp_connect_s,
                               command_timeout_s=t.qmp_command_s)
        self.monitor.on_event = self._event
        self.monitor.on_closed = self._qmp_closed
        self.in_colo = False
        self.colo_error = False
        """COLO_EXIT reason=error seen: QEMU waits for a failover command."""
        self.failed_over = False
        self.colo_exits = 0
        self.link = QmpLink(self.monitor, name, self._session, retry_s=retry_s)
        self._task: asyncio.Task[None] | None = None
        self._refreshes: set[asyncio.Task[bool]] = set()

    @property
    def qemu_healthy(self) -> bool | None:
        """What the heartbeat tells the peer (QmpLink.healthy)."""
        return self.link.healthy

    def _event(self, name: str, data: dict[str, Any], at: float) -> None:
        if name == "COLO_EXIT":
            self.colo_exits += 1
            reason = data.get("reason")
            if reason == "error" and not self.failed_over:
                # The replication stream broke (the primary died, or the link): QEMU
                # waits for x-colo-lost-heartbeat; the heartbeat rule decides.
                self.colo_error = True
                log.warning("%s: COLO_EXIT mode=%s reason=error: replication stream broken; "
                            "failover waits for the heartbeat rule", self.name,
                            data.get("mode"))
            else:
                self.in_colo = False
                log.warning("%s: COLO_EXIT mode=%s reason=%s", self.name, data.get("mode"),
                            reason)
        elif name == "RESUME" and not self.in_colo and not self.failed_over:
            task = asyncio.get_running_loop().create_task(self.refresh())
            self._refreshes.add(task)
            task.add_done_callback(self._refreshes.discard)

    def _qmp_closed(self, reason: str) -> None:
        log.warning("%s: QMP connection closed (%s): the secondary QEMU is gone; the "
                    "peer is told by the heartbeat", self.name, reason)
        self.in_colo = False

    async def refresh(self) -> bool:
        """Re-read query-colo-status; True if this QEMU is a COLO secondary."""
        try:
            status = await self.monitor.execute("query-colo-status")
        except QmpError as exc:
            log.debug("%s: query-colo-status: %s", self.name, exc)
            return self.in_colo
        was, self.in_colo = self.in_colo, status.get("mode") == "secondary"
        if self.in_colo and not was:
            log.info("%s: COLO running (secondary)", self.name)
        return self.in_colo

    async def _session(self) -> None:
        """While QMP is connected: learn the COLO mode, then follow the events."""
        await self.refresh()
        await asyncio.Event().wait()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.link.run())
        await asyncio.sleep(0)

    async def failover(self) -> FailoverResult:
        self.failed_over = True
        result = await secondary_takeover(self.monitor, self.redirectors,
                                          self.failover_before)
        self.in_colo = self.colo_error = False
        return result

    async def stop(self) -> None:
        self.link.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.monitor.close()
