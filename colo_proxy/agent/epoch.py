"""The epoch rule: which frames a finished checkpoint flushes.

A KVM COLO checkpoint is seen over QMP as ``STOP`` then ``RESUME`` on the
primary.  Between the two, both VMs are stopped: the secondary stops when it
receives the checkpoint request, the primary after the secondary's reply, and
the secondary runs again only once it has loaded the new state, just before the
primary's ``RESUME``.  So

* a frame *read before STOP was seen* was produced before the checkpoint: it
  belongs to the epoch that the checkpoint ends;
* a frame read after STOP may be an old frame still in flight, or -- in the
  0.2-3.9 ms between the SVM's resume and the flush at RESUME -- a frame of the
  new epoch.  It cannot be told apart, so it is never flushed.

**Rule.**  At STOP the gate *fences*: frames read from then on are parked, not
given to the engine.  At RESUME the checkpoint is done: the engine flushes what
it holds (everything read before the fence: primaries released, secondaries
dropped), then the parked frames are given to the engine in arrival order, as
the first frames of the new epoch, and are compared.  Consequences:

* no frame read after STOP is released uncompared (a new PVM frame waits for
  its SVM counterpart) and none is dropped by the flush (a new SVM frame is
  kept for the PVM frame that will match it);
* an *old* frame that arrives after STOP is compared in the new epoch; if its
  counterpart was flushed it waits for the compare timeout and costs one more
  checkpoint.  That is a cost, never a wrong release or a loss.  STOP reaches
  the agent 1.2 ms (median) after the VM stopped, so it is rare.

The fence is bounded: without RESUME within ``resume_timeout`` (QEMU died
mid-checkpoint, or a stop/cont by hand) the parked frames go to the engine
unflushed (``unfence``) and stay held until the next checkpoint.

Outside COLO (before COLO is entered, after failover) there is no secondary to
compare with: the gate is *solo*: every primary frame is released at once,
every secondary frame dropped, and entering solo releases everything held.

How it plugs in: the agent's policy (policy.py) installs the gate with the
seam's engine-wrapper hook (``DatapathControl.wrap_engine``, colo_proxy/seam/
control.py), so the datapath pushes every frame through it, and the seam's
``fence``/``flush``/``unfence``/``enter_solo``/``enter_colo`` reach it.  The
gate returns decisions and never acts on them: the seam routes them.

Engine hook that would remove the parking (proposed to the engine's owner):
``Engine.fence() -> int`` returning an arrival sequence number, and
``Engine.checkpoint_done(now_ms, upto=fence)`` flushing only the arrivals up to
it and re-basing each connection at the first frame after it.  The gate models
exactly that without touching the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..compare.engine import Engine
from ..compare.model import Decision, Drop, Release, Side

log = logging.getLogger("colo_proxy.agent.epoch")


@dataclass
class GateCounters:
    fences: int = 0
    flushes: int = 0
    unfenced_without_flush: int = 0
    parked_total: int = 0
    parked_max: int = 0
    solo_released: int = 0
    solo_dropped: int = 0
    solo_entries: int = 0
    released_frames: int = 0
    released_bytes: int = 0


class EpochGate:
    """Sits between a datapath and its Engine; see the module docstring.  An
    ``EngineWrapper`` of the seam (colo_proxy/seam/control.py): every method
    returns the decisions it produced, for the seam to route.
    """

    def __init__(self, engine: Engine, *, solo: bool = True,
                 max_parked: int = 1 << 16) -> None:
        self.engine = engine
        self.on_match_release: Callable[[float], None] | None = None
        """Called with held_ms of every primary released by a match (the histogram)."""
        self.solo = solo
        self.fenced = False
        self.max_parked = max_parked
        self.counters = GateCounters()
        self._parked: list[tuple[Side, bytes, float, object, int]] = []

    # -- the datapath's side ---------------------------------------------------

    def push(self, side: Side, frame: bytes, now_ms: float, tag: object = None,
             vnet_hdr_len: int = 0) -> list[Decision]:
        if self.solo:
            if side == Side.PRIMARY:
                self.counters.solo_released += 1
                self.counters.released_frames += 1
                self.counters.released_bytes += len(frame)
                return [Release(tag, None, 0.0)]
            self.counters.solo_dropped += 1
            return []
        if self.fenced:
            self._parked.append((side, frame, now_ms, tag, vnet_hdr_len))
            self.counters.parked_total += 1
            self.counters.parked_max = max(self.counters.parked_max, len(self._parked))
            if len(self._parked) >= self.max_parked:
                log.warning("epoch: %d frames parked since STOP; lifting the fence "
                            "without a flush", len(self._parked))
                admitted = self._admit()
                self._count(admitted, None)
                return admitted
            return []
        result: list[Decision] = self.engine.push(side, frame, now_ms, tag, vnet_hdr_len)
        if result:
            self._count(result, self.on_match_release)
        return result

    def _count(self, decisions: list[Decision], observe: Callable[[float], None] | None
               ) -> None:
        c = self.counters
        for d in decisions:
            if type(d) is Release:
                c.released_frames += 1
                tag = d.tag
                c.released_bytes += len(tag) if type(tag) is bytes else len(
                    getattr(tag, "payload", b""))
                if observe is not None:
                    observe(d.held_ms)

    def tick(self, now_ms: float) -> list[Decision]:
        if self.solo:
            return []
        result: list[Decision] = self.engine.tick(now_ms)
        if result:
            self._count(result, None)
        return result

    def held(self) -> tuple[int, int]:
        """Frames parked here (primary, secondary), not yet in the engine."""
        primary = sum(1 for p in self._parked if p[0] == Side.PRIMARY)
        return primary, len(self._parked) - primary

    # -- the checkpoint controller's side --------------------------------------

    def fence(self) -> None:
        """STOP seen: frames read from now on belong to the next epoch."""
        if self.solo or self.fenced:
            return
        self.fenced = True
        self.counters.fences += 1

    def checkpoint_done(self, now_ms: float) -> list[Decision]:
        """RESUME after STOP: the checkpoint is done.  The engine flushes what it
        holds, then the parked frames enter the new epoch."""
        out: list[Decision] = []
        if not self.solo:
            out.extend(self.engine.checkpoint_done(now_ms))
            self.counters.flushes += 1
            out.extend(self._admit())
        self.fenced = False
        self._count(out, None)
        return out

    def unfence(self) -> list[Decision]:
        """The fence is lifted without a checkpoint (no RESUME in time)."""
        if not self.fenced:
            return []
        self.counters.unfenced_without_flush += 1
        out = self._admit()
        self._count(out, None)
        return out

    def enter_solo(self, now_ms: float) -> list[Decision]:
        """No secondary to compare with: release everything held, pass all primaries."""
        if self.solo:
            return []
        out = self.engine.checkpoint_done(now_ms)
        parked, self._parked = self._parked, []
        self.fenced = False
        self.solo = True
        self.counters.solo_entries += 1
        for side, _frame, _now, tag, _v in parked:
            if side == Side.PRIMARY:
                out.append(Release(tag, None, 0.0))
                self.counters.solo_released += 1
            else:
                self.counters.solo_dropped += 1
        self._count(out, None)
        return out

    def enter_colo(self) -> None:
        """COLO entered: compare from now on.  The engine starts empty."""
        if not self.solo:
            return
        self.solo = False
        self.fenced = False

    def _admit(self) -> list[Decision]:
        self.fenced = False
        parked, self._parked = self._parked, []
        out: list[Decision] = []
        push = self.engine.push
        for side, frame, now, tag, vlen in parked:
            out.extend(push(side, frame, now, tag, vlen))
        return out

    @property
    def parked(self) -> int:
        return len(self._parked)


def releases(decisions: Iterable[Decision]) -> list[object]:
    return [d.tag for d in decisions if isinstance(d, Release)]


def drops(decisions: Iterable[Decision]) -> list[Drop]:
    return [d for d in decisions if isinstance(d, Drop)]
