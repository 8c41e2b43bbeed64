"""``Seam``: engine decisions -> actions, the same for every datapath.

A datapath owns its I/O and the engine's input: it pushes frames into the
``Engine`` and gives every list of decisions to ``Seam.handle``.  The seam

* hands released primary frames (their tags, in order) to ``DatapathIO.release``
  and primary drops to ``DatapathIO.drop`` -- the only two things a datapath
  must implement;
* passes checkpoint requests to the ``CheckpointPolicy`` and, when the policy
  reports completion, runs ``Engine.checkpoint_done`` and routes its decisions;
* counts everything (``SeamCounters``), records the match-to-release latency
  (``LatencyHistogram``) and writes the event stream (``EventWriter``).

The datapath pushes its frames into ``Seam.input``: the ``Engine``, or the engine
wrapper a bound policy installed (``control.py``: ``bind(control)``,
``DatapathControl.wrap_engine``); the seam's own ticks and flushes go the same way.

Exit (``settle``): the datapath first stops reading its inputs, then calls
``settle(rule)`` once: every held frame is settled by the rule (``flush``:
held primaries released, held secondaries discarded, as a checkpoint would do;
``drop``: everything held discarded), then the datapath writes out what was
released and reports frames it could not deliver (``lost``), then ``finish``
writes the final stats and exit events.  The figures of the exit event are
final: nothing is read or released after ``settle``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from ..compare.engine import Engine
from ..compare.model import CheckpointRequest, Decision, Drop, Release
from .checkpoint import CheckpointPolicy, Outcome
from .control import BindablePolicy, DatapathControl, EngineInput
from .counters import SeamCounters
from .events import EventWriter, connection_record, request_record
from .latency import LatencyHistogram

EXIT_RULES = ("flush", "drop")


class DatapathIO(Protocol):
    def release(self, tags: list[object]) -> int:
        """Send these released primary frames on, in this order; return their bytes."""
        ...

    def drop(self, tags: list[object]) -> None:
        """Discard these held primary frames (engine overflow; exit rule ``drop``)."""
        ...


class Seam:
    def __init__(self, engine: Engine, policy: CheckpointPolicy, io: DatapathIO,
                 *, events: EventWriter | None = None,
                 clock_ms: Callable[[], float] | None = None,
                 log: Callable[[str], None] | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
        self.engine = engine
        self.input: EngineInput = engine
        """Where frames are pushed (by the datapath), ticked and flushed: the engine or
        the wrapper a bound policy installed."""
        self.policy = policy
        self.io = io
        self.events = events or EventWriter(None)
        self.counters = SeamCounters()
        self.latency = LatencyHistogram(keep_window=self.events.enabled)
        self.clock_ms = clock_ms or (lambda: time.monotonic() * 1000.0)
        self.log = log or (lambda line: None)
        """Per-request lines (checkpoint requested/failed)."""
        self.warn = warn or self.log
        """Lines an operator must see (checkpoint overdue)."""
        self._polling = False
        self._settled = False
        self._requested_at: float | None = None
        """Clock (ms) of the request the policy is working on; None when none is."""
        self._overdue_at = 0.0
        self.control = DatapathControl(self)
        if isinstance(policy, BindablePolicy):
            policy.bind(self.control)

    @property
    def settled(self) -> bool:
        """``settle`` ran: nothing is released any more."""
        return self._settled

    @property
    def requesting(self) -> bool:
        """A request was passed to the policy and is not completed yet."""
        return self._requested_at is not None

    # -- decisions ---------------------------------------------------------------

    def handle(self, decisions: list[Decision]) -> None:
        """Route one list of decisions (from push, tick or checkpoint_done)."""
        if not decisions:
            return
        released: list[object] = []
        dropped: list[object] = []
        requested = False
        c = self.counters
        add = self.latency.add
        for d in decisions:
            kind = type(d)
            if kind is Release:
                released.append(d.tag)  # type: ignore[union-attr]
                add(d.held_ms)  # type: ignore[union-attr]
            elif kind is Drop:
                drop: Drop = d  # type: ignore[assignment]
                where = c.dropped_secondary if drop.side else c.dropped_primary
                reason = str(drop.reason)
                where[reason] = where.get(reason, 0) + 1
                if not drop.side and drop.tag is not None:
                    dropped.append(drop.tag)
            elif kind is CheckpointRequest:
                self._request(d)  # type: ignore[arg-type]
                requested = True
        if released:
            c.released_frames += len(released)
            c.released_bytes += self.io.release(released)
        if dropped:
            self.io.drop(dropped)
        if requested:
            self.poll()

    def _request(self, req: CheckpointRequest) -> None:
        c = self.counters
        reason = str(req.reason)
        c.checkpoint_requests[reason] = c.checkpoint_requests.get(reason, 0) + 1
        self.log(f"checkpoint requested: {req.reason}"
                 f"{f' on {req.key}' if req.key is not None else ''}"
                 f"{f' ({req.detail})' if req.detail else ''}")
        self.events.emit("checkpoint-request", **request_record(req), policy=self.policy.name,
                         note=self.policy.note)
        now = self.clock_ms()
        self._requested_at = now
        self._overdue_at = now + self.engine.config.compare_timeout_ms
        self.policy.request(req)

    # -- checkpoints -------------------------------------------------------------

    def poll(self) -> None:
        """Ask the policy for news; run the flush when it reports completion."""
        if self._polling or self._settled:
            return
        self._polling = True
        try:
            outcome = self.policy.poll()
            if outcome is not None:
                self._outcome(outcome)
        finally:
            self._polling = False

    def _outcome(self, outcome: Outcome) -> None:
        if outcome.done:
            self.checkpoint_done(outcome.note)
        else:
            self.counters.checkpoint_failures += 1
            self.log(f"checkpoint failed ({self.policy.name}: status {outcome.failed_rc}); "
                     f"retrying in {self.policy.retry_s} s")
            self.events.emit("checkpoint-failed", rc=outcome.failed_rc,
                             retry_s=self.policy.retry_s, policy=self.policy.name,
                             note=outcome.note)

    def checkpoint_done(self, note: str | None = None,
                        decisions: list[Decision] | None = None) -> None:
        """The checkpoint is complete: flush the engine (through the wrapper, if any) and
        route its decisions.  ``decisions``: the flush was already made (``enter_solo``)."""
        if decisions is None:
            decisions = self.input.checkpoint_done(self.clock_ms())
        self.counters.checkpoints_done += 1
        self._requested_at = None
        released = sum(1 for d in decisions if type(d) is Release)
        # Not len - released: a wrapper's admitted frames may add a new request.
        dropped = sum(1 for d in decisions if type(d) is Drop)
        self.handle(decisions)
        self.events.emit("checkpoint-done", released=released,
                         dropped=dropped, policy=self.policy.name,
                         note=note or self.policy.note)

    def tick(self) -> None:
        """Timer: the engine's timeout check, then the policy, then the overdue check."""
        now = self.clock_ms()
        self.handle(self.input.tick(now))
        self.poll()
        if self._requested_at is not None and now >= self._overdue_at and not self._settled:
            self._overdue(now)

    def _overdue(self, now: float) -> None:
        """The policy has not completed a request within the compare timeout.  While a
        request is outstanding the engine asks for no other one (a later frame's timeout
        is not even counted: ``Core.check_timeout`` returns while one is pending), so
        without this report a
        slow or lost checkpoint holds frames well past the timeout with nothing
        logged; this makes it visible, once per compare timeout."""
        assert self._requested_at is not None
        self._overdue_at = now + self.engine.config.compare_timeout_ms
        self.counters.checkpoints_overdue += 1
        waited = now - self._requested_at
        held_p, held_s = self.held()
        self.warn(f"checkpoint overdue: {self.policy.name} has not completed the request "
                 f"of {waited:.0f} ms ago; holding {held_p} primary and {held_s} secondary "
                 f"frames ({self.engine.stats.requests_suppressed} later requests suppressed)")
        self.events.emit("checkpoint-overdue", waited_ms=round(waited, 3),
                         policy=self.policy.name, held_primary=held_p, held_secondary=held_s,
                         requests_suppressed=self.engine.stats.requests_suppressed)

    # -- exit --------------------------------------------------------------------

    def held(self) -> tuple[int, int]:
        """(held primary, held secondary) frames right now (an engine wrapper's included)."""
        wrapper = self.control.wrapper
        primary, secondary = wrapper.held() if wrapper is not None else (0, 0)
        for conn in self.engine.connections():
            primary += conn.held_primary
            secondary += conn.held_secondary
        return primary, secondary

    def settle(self, rule: str) -> tuple[int, int]:
        """Exit: settle every held frame by ``rule`` (flush | drop) and stop the policy.
        Returns (primary, secondary) frames settled.  Call once, after the datapath
        stopped reading its inputs."""
        assert rule in EXIT_RULES, rule
        self.policy.stop()
        self._settled = True
        held_p, held_s = self.held()
        c = self.counters
        if held_p + held_s:
            now = self.clock_ms()
            decisions = self.input.checkpoint_done(now)
            if self.input is not self.engine and self.held() != (0, 0):
                # The wrapper admitted what it held back (fenced frames): settle those too.
                decisions += self.input.checkpoint_done(now)
            tags = [d.tag for d in decisions if type(d) is Release]
            drops = [d for d in decisions if isinstance(d, Drop)]
            secondary = sum(1 for d in drops if d.side)
            # Primary drops come only from frames a wrapper admitted (engine limits).
            dropped = [d.tag for d in drops if not d.side and d.tag is not None]
            c.exit_dropped_secondary += secondary
            if rule == "flush":
                c.exit_released += len(tags)
                c.released_frames += len(tags)
                for d in decisions:
                    if type(d) is Release:
                        self.latency.add(d.held_ms)
                c.released_bytes += self.io.release(tags)
            else:
                dropped, tags = tags + dropped, []
            if dropped:
                c.exit_dropped_primary += len(dropped)
                self.io.drop(dropped)
            return len(tags) + len(dropped), secondary
        return 0, 0

    # -- reports -----------------------------------------------------------------

    def stats(self, **datapath: Any) -> None:
        """One stats event (docs/datapaths.md)."""
        if not self.events.enabled:
            return
        self.events.emit(
            "stats",
            counters=self.engine.stats.as_dict(),
            seam=self.counters.as_dict(),
            connections=[connection_record(c) for c in self.engine.connections()],
            latency_ms=self.latency.window(),
            latency_histogram=self.latency.as_dict(),
            datapath=datapath or dict(self.counters.io),
        )

    def finish(self, reason: str) -> None:
        """Final stats event, then ``exit`` with the final figures; closes the stream."""
        self.stats()
        s = self.engine.stats
        c = self.counters
        self.events.emit("exit", reason=reason, frames={"primary": s.frames[0],
                                                        "secondary": s.frames[1]},
                         released=c.released_frames, delivered=c.delivered_frames,
                         lost=c.lost_frames, exit_released=c.exit_released,
                         exit_dropped_primary=c.exit_dropped_primary,
                         exit_dropped_secondary=c.exit_dropped_secondary,
                         checkpoint_requests=sum(c.checkpoint_requests.values()),
                         checkpoints_done=c.checkpoints_done)
        self.events.close()
