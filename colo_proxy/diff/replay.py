"""Drive the comparison engine with the VM output of two captures.

Frames are pushed in the order of their time relative to each capture's earliest
frame.  Time only advances through the frames' timestamps, plus:

* a ``tick`` at the exact moment the oldest held frame would time out, so timeout
  checkpoints are reported at the time a live proxy would request them;
* ``checkpoint_done`` ``checkpoint_latency_ms`` after each request (the VM pause and
  state transfer), so divergences after a checkpoint are found as well; secondary
  frames that only repeat what the primary had sent before the checkpoint are not
  replayed (the synchronised secondary would not send them);
* after the last frame, time runs on until nothing is held and no checkpoint is pending.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..compare.engine import Engine
from ..compare.model import (
    CheckpointRequest,
    ConnKey,
    Decision,
    Drop,
    Release,
    Side,
)
from .headers import TCP_FIN, TCP_RST, TCP_SYN, Headers
from .streams import Streams

_EPSILON_MS = 0.001
_CONTROL = TCP_SYN | TCP_FIN | TCP_RST
_MAX_DRAIN_STEPS = 1_000_000


@dataclass(frozen=True)
class Output:
    """A VM output frame to replay."""

    time_ms: float
    side: Side
    index: int
    """Frame number in its capture (1-based)."""
    data: bytes
    headers: Headers


@dataclass
class Checkpoint:
    """A checkpoint request the proxy would have made, and its circumstances."""

    request: CheckpointRequest
    time_ms: float
    trigger: Output | None
    """The frame whose push produced the request (None for tick-driven requests)."""
    done_ms: float
    incarnations: tuple[int, int]
    """Stream incarnation of the request's key on each side at request time."""


@dataclass
class ConnTally:
    """What the replay saw of one connection (keyed in the VM-output direction)."""

    key: ConnKey
    frames: list[int] = field(default_factory=lambda: [0, 0])
    bytes: list[int] = field(default_factory=lambda: [0, 0])
    """Payload bytes (TCP/UDP payload; whole frame for other protocols), per side."""
    matched_frames: int = 0
    """Primary frames the engine released without a checkpoint: verified against the
    secondary (or carrying nothing to verify, like a pure ACK)."""
    matched_bytes: int = 0
    """Payload bytes of those frames."""
    uncompared: int = 0
    """Primary frames released without comparison: passthrough rules, non-IP (L2 control)."""
    released_by_checkpoint: int = 0
    covered: int = 0
    """Secondary frames not replayed: the primary had sent that output before a
    checkpoint, which (in COLO) brings the secondary to the primary's state."""
    dropped: dict[str, int] = field(default_factory=dict)
    undecided: int = 0
    """Frames the engine neither released nor dropped, even after the final timeouts."""
    first_time_ms: float = 0.0


@dataclass
class ReplayResult:
    checkpoints: list[Checkpoint]
    tallies: dict[ConnKey, ConnTally]
    streams: Streams
    end_ms: float
    """Time of the last replayed frame."""
    still_held: int
    """Frames the engine neither released nor dropped, even after the final timeouts."""


def payload_len(h: Headers) -> int:
    return h.size


class Replay:
    def __init__(self, engine: Engine, checkpoint_latency_ms: float) -> None:
        self.engine = engine
        self.latency = checkpoint_latency_ms
        self.streams = Streams()
        self.checkpoints: list[Checkpoint] = []
        self.tallies: dict[ConnKey, ConnTally] = {}
        self._held: dict[int, tuple[float, Output]] = {}
        """tag -> (push time, frame) for frames the engine has not decided yet, oldest first."""
        self._stale: set[int] = set()
        self._checkpoint_due: float | None = None
        self._now = 0.0
        self._tag = 0
        self._trigger: Output | None = None
        self._in_checkpoint = False
        self._synced: dict[ConnKey, tuple[int, int, int]] = {}
        """key -> the primary's (incarnation, stream end, control flags) at the last
        checkpoint, until the secondary's replayed output goes past it."""

    # -- decisions -------------------------------------------------------------
    def _tally(self, out: Output) -> ConnTally:
        key = out.headers.key
        tally = self.tallies.get(key)
        if tally is None:
            tally = self.tallies[key] = ConnTally(key, first_time_ms=out.time_ms)
        return tally

    def _handle(self, decisions: Iterable[Decision]) -> None:
        for d in decisions:
            if isinstance(d, CheckpointRequest):
                self._request(d)
                continue
            if not isinstance(d.tag, int):
                continue
            entry = self._held.pop(d.tag, None)
            self._stale.discard(d.tag)
            if entry is None:
                continue
            out = entry[1]
            tally = self._tally(out)
            if isinstance(d, Release):
                if self._in_checkpoint:
                    tally.released_by_checkpoint += 1
                elif self._uncompared(out.headers):
                    tally.uncompared += 1
                else:
                    tally.matched_frames += 1
                    tally.matched_bytes += payload_len(out.headers)
            elif isinstance(d, Drop):
                reason = str(d.reason)
                tally.dropped[reason] = tally.dropped.get(reason, 0) + 1

    def _uncompared(self, h: Headers) -> bool:
        if not h.ip:
            return True
        rules = self.engine.config.passthrough
        return bool(rules) and any(r.matches(h.key) for r in rules)

    def _request(self, req: CheckpointRequest) -> None:
        time = self._now
        if self._checkpoint_due is None:
            self._checkpoint_due = time + self.latency
        key = req.key
        inc = ((self.streams.current(key, Side.PRIMARY), self.streams.current(key, Side.SECONDARY))
               if key is not None else (-1, -1))
        self.checkpoints.append(Checkpoint(req, time, self._trigger, self._checkpoint_due, inc))

    # -- time ------------------------------------------------------------------
    def _next_deadline(self) -> tuple[float, int] | None:
        timeout = self.engine.config.compare_timeout_ms
        for tag, (pushed, _) in self._held.items():
            if tag not in self._stale:
                return pushed + timeout + _EPSILON_MS, tag
        return None

    def _advance(self, until: float) -> None:
        """Run the timers (timeouts, checkpoint completion) that fire up to ``until``."""
        for _ in range(_MAX_DRAIN_STEPS):
            deadline = None if self._checkpoint_due is not None else self._next_deadline()
            due = self._checkpoint_due
            if due is not None and due <= until:
                self._now = due
                self._checkpoint_due = None
                self._trigger = None
                self._in_checkpoint = True
                try:
                    self._handle(self.engine.checkpoint_done(due))
                finally:
                    self._in_checkpoint = False
                self._stale.clear()
                self._snapshot_primary()
                continue
            if deadline is not None and deadline[0] <= until:
                self._now = deadline[0]
                self._trigger = None
                self._handle(self.engine.tick(deadline[0]))
                if deadline[1] in self._held and self._checkpoint_due is None:
                    self._stale.add(deadline[1])  # the engine let it be; do not spin on it
                continue
            break
        self._now = max(self._now, until)

    def _snapshot_primary(self) -> None:
        """After a checkpoint the secondary is where the primary was: remember where."""
        for key in self.streams.keys(Side.PRIMARY):
            stream = self.streams.get(key, Side.PRIMARY)
            if stream is not None:
                self._synced[key] = (self.streams.current(key, Side.PRIMARY),
                                     stream.sent_end, stream.flags)

    def _covered(self, out: Output, end: int | None) -> bool:
        """A secondary frame whose output the primary had sent before the last checkpoint:
        in COLO the synchronised secondary would not send it again."""
        key = out.headers.key
        synced = self._synced.get(key)
        if synced is None or end is None:
            return False
        incarnation, p_end, p_flags = synced
        ctl = out.headers.flags & _CONTROL
        if (self.streams.current(key, Side.SECONDARY) == incarnation and end <= p_end
                and not ctl & ~p_flags):
            return True
        del self._synced[key]  # past the sync point: compare from here on
        return False

    # -- main loop -------------------------------------------------------------
    def push(self, out: Output) -> None:
        self._advance(out.time_ms)
        self._now = out.time_ms
        tally = self._tally(out)
        tally.frames[out.side] += 1
        tally.bytes[out.side] += payload_len(out.headers)
        end = self.streams.add(out.side, out.headers, out.data)
        if out.side == Side.SECONDARY and self._covered(out, end):
            tally.covered += 1
            return
        self._tag += 1
        self._held[self._tag] = (out.time_ms, out)
        self._trigger = out
        self._handle(self.engine.push(out.side, out.data, out.time_ms, tag=self._tag))
        self._trigger = None

    def run(self, primary: list[Output], secondary: list[Output]) -> ReplayResult:
        merged = heapq.merge(primary, secondary, key=lambda o: (o.time_ms, o.side))
        last = 0.0
        for out in merged:
            self.push(out)
            last = out.time_ms
        # Let every held frame time out and every checkpoint complete.
        horizon = last
        for _ in range(_MAX_DRAIN_STEPS):
            horizon += self.engine.config.compare_timeout_ms + self.latency + 1.0
            self._advance(horizon)
            if self._checkpoint_due is None and self._next_deadline() is None:
                break
        for _, out in self._held.values():
            self._tally(out).undecided += 1
        return ReplayResult(self.checkpoints, self.tallies, self.streams, last,
                            len(self._held))
