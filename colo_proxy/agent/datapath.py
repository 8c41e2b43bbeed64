"""The qemu-socket datapath with the agent's checkpoint path wired in.

Until the shared datapath seam exists, this is a thin subclass of
:class:`QemuSocketDatapath`:

* the engine is wrapped in an :class:`EpochGate` (the datapath only calls
  ``push``/``tick``/``checkpoint_done`` and reads stats, which the gate passes
  through), so STOP fences and RESUME flushes (epoch.py);
* a checkpoint request goes to the :class:`CheckpointController` instead of
  notify_dev or a shell hook;
* the exit flush (SIGTERM with ``held_on_exit=flush``) also releases parked
  primaries.

What the seam should offer instead (see the agent's report): a policy object
with ``request(req)`` and a handle back into the datapath with ``fence()``,
``flush()``, ``unfence()``, ``enter_solo()``, ``enter_colo()``, all called on the
datapath's event loop; and the decision handler as a public method.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

from ..compare.engine import Engine
from ..compare.model import CheckpointRequest
from ..datapath.qemu_socket import QemuSocketDatapath, QemuSocketSettings
from .epoch import EpochGate

if TYPE_CHECKING:
    from .checkpoint import CheckpointController


def _now_ms() -> float:
    return time.monotonic() * 1000.0


class AgentDatapath(QemuSocketDatapath):
    def __init__(self, engine: Engine, settings: QemuSocketSettings) -> None:
        super().__init__(engine, settings)
        self.real_engine = engine
        self.gate = EpochGate(engine, self._handle, _now_ms, solo=True)
        # The gate has the Engine methods the datapath calls (and forwards the rest).
        self.engine = cast(Engine, self.gate)
        self.controller: CheckpointController | None = None

    def _checkpoint_request(self, req: CheckpointRequest) -> None:
        super()._checkpoint_request(req)
        if self.controller is not None:
            self.controller.request(str(req.reason))

    def checkpoint_done(self) -> None:
        # Only the exit path calls this here: release everything, parked frames too.
        self.gate.enter_solo()
