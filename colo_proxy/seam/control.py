"""Push-style policies: ``bind(control)`` and the ``DatapathControl`` they get.

A plain ``CheckpointPolicy`` is polled: it reports completion from ``poll``.  A
policy that learns the checkpoint's phases as they happen (the QMP agent sees
``STOP`` and ``RESUME``) needs to act at those moments, on the datapath's loop.
Such a policy also has ``bind(control)`` (``BindablePolicy``); the ``Seam``
calls it once, when it is built, with a ``DatapathControl``:

* ``fence()``: the VMs stopped (STOP): frames read from now on belong to the
  next epoch;
* ``flush(note)``: the checkpoint is complete (RESUME): the seam runs the flush
  exactly as after ``poll() -> Outcome(done=True)`` (counted, ``checkpoint-done``
  event) -- through the engine wrapper, which then admits what it held back;
* ``unfence()``: the fence is lifted without a checkpoint (no RESUME in time);
* ``enter_solo(note)``: no secondary to compare with (outside COLO, failover):
  everything held is released, and with a wrapper every later primary passes;
* ``enter_colo()``: comparison starts (COLO entered).

Without a wrapper the seam cannot fence: ``fence``, ``unfence`` and
``enter_colo`` do nothing, ``flush`` flushes, ``enter_solo`` flushes what is held.

``wrap_engine(wrapper)``: every engine call of the datapath and of the seam
(``push``, ``tick``, ``checkpoint_done``) goes through ``wrapper`` from then on
(``EngineWrapper``; the agent's ``EpochGate`` implements the epoch rule with
it).  The wrapper returns decisions and never acts on them: the seam routes
them.  Datapaths push through ``Seam.input`` for this reason.

Every control call is ignored after the seam settled (exit): nothing is
released after the exit figures are taken.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..compare.engine import Engine
from ..compare.model import CheckpointRequest, Decision, Side
from .checkpoint import Outcome

if TYPE_CHECKING:
    from .seam import Seam

SOLO_NOTE = "no secondary to compare with: held output released"


class EngineInput(Protocol):
    """What the datapath and the seam call: the ``Engine`` itself, or a wrapper."""

    def push(self, side: Side, frame: bytes, now_ms: float, tag: object = None,
             vnet_hdr_len: int = 0) -> list[Decision]: ...

    def tick(self, now_ms: float) -> list[Decision]: ...

    def checkpoint_done(self, now_ms: float) -> list[Decision]: ...


class EngineWrapper(EngineInput, Protocol):
    """An engine wrapper installed with ``DatapathControl.wrap_engine``.

    ``checkpoint_done`` flushes what the engine holds and then admits what the
    wrapper held back (those frames are compared in the new epoch); ``held`` is
    what the wrapper holds itself (primary, secondary frames), not in the engine.
    """

    def held(self) -> tuple[int, int]: ...

    def fence(self) -> None: ...

    def unfence(self) -> list[Decision]: ...

    def enter_solo(self, now_ms: float) -> list[Decision]: ...

    def enter_colo(self) -> None: ...


@runtime_checkable
class BindablePolicy(Protocol):
    """A checkpoint policy that also drives the datapath (see the module docstring)."""

    name: str
    note: str
    retry_s: float | None

    def bind(self, control: DatapathControl) -> None: ...

    def request(self, request: CheckpointRequest) -> None: ...

    def poll(self) -> Outcome | None: ...

    def stop(self) -> None: ...


class DatapathControl:
    """The handle a bound policy gets; call it only on the datapath's loop."""

    def __init__(self, seam: Seam) -> None:
        self._seam = seam
        self.wrapper: EngineWrapper | None = None

    @property
    def engine(self) -> Engine:
        """The real engine (a wrapper wraps this one)."""
        return self._seam.engine

    def clock_ms(self) -> float:
        return self._seam.clock_ms()

    def wrap_engine(self, wrapper: EngineWrapper) -> None:
        """Route every push, tick and flush through ``wrapper`` (before frames flow)."""
        self.wrapper = wrapper
        self._seam.input = wrapper

    def fence(self) -> None:
        if self.wrapper is not None and not self._seam.settled:
            self.wrapper.fence()

    def flush(self, note: str | None = None) -> None:
        if not self._seam.settled:
            self._seam.checkpoint_done(note)

    def unfence(self) -> None:
        if self.wrapper is not None and not self._seam.settled:
            self._seam.handle(self.wrapper.unfence())

    def enter_solo(self, note: str = SOLO_NOTE) -> None:
        seam = self._seam
        if seam.settled:
            return
        now = seam.clock_ms()
        if self.wrapper is not None:
            decisions = self.wrapper.enter_solo(now)
        elif sum(seam.held()) or seam.requesting:
            decisions = seam.engine.checkpoint_done(now)
        else:
            decisions = []
        if decisions or seam.requesting:
            seam.checkpoint_done(note, decisions)

    def enter_colo(self) -> None:
        if self.wrapper is not None and not self._seam.settled:
            self.wrapper.enter_colo()
