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
from .headers import (
    CONTROL,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    Headers,
    parse,
    rebuild_tcp,
)
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
    """Primary frames released without comparison: passthrough rules, L2 control frames."""
    released_by_checkpoint: int = 0
    covered: int = 0
    """Secondary frames not replayed: the primary had sent that output before a
    checkpoint, which (in COLO) brings the secondary to the primary's state."""
    trimmed: int = 0
    """Secondary frames that straddled the primary's progress at a checkpoint: only their
    bytes beyond it were replayed."""
    resent: int = 0
    """Frames replayed for the secondary after a checkpoint: the output it had sent
    beyond the primary's progress (a synchronised secondary sends it again)."""
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
        self._last_secondary: dict[ConnKey, Output] = {}
        self._resent_to: dict[tuple[ConnKey, int], int] = {}
        """(key, incarnation) -> secondary stream end already resent (resend once)."""
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
        """Released without a comparison: L2 control frames (ARP, ND, LLDP, ...) and the
        flows of a passthrough rule.  Other non-IP and malformed frames are compared."""
        if h.kind == CONTROL:
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
                self._resend_secondary(due)
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

    def _resend_secondary(self, now: float) -> None:
        """A secondary that was ahead of the primary at the checkpoint: the engine forgot
        its output beyond the primary's progress, which the synchronised secondary would
        send again.  Replay that output (bytes, FIN) once, from the primary's point (if
        it diverges, the checkpoint that follows does not resend it again)."""
        for key, (incarnation, p_end, p_flags) in list(self._synced.items()):
            stream = self.streams.get(key, Side.SECONDARY)
            last = self._last_secondary.get(key)
            if (stream is None or last is None or stream.base is None
                    or self.streams.current(key, Side.SECONDARY) != incarnation
                    or stream.sent_end <= p_end or last.headers.l4 < 0
                    or stream.sent_end <= self._resent_to.get((key, incarnation), -1)):
                continue
            self._resent_to[(key, incarnation)] = stream.sent_end
            data, have = stream.assemble()
            payload = data[p_end:]
            if have[p_end:].count(0):
                continue  # a hole: the replay cannot know what the secondary sent
            fin = bool(stream.flags & TCP_FIN) and stream.sent_end == len(data) + 1
            flags = TCP_ACK | (0x08 if payload else 0) | (TCP_FIN if fin else 0)
            frame = rebuild_tcp(last.data, last.headers, (stream.base + p_end) & 0xFFFFFFFF,
                                payload, flags)
            headers = parse(frame)
            if headers is None:
                continue
            self._synced[key] = (incarnation, stream.sent_end, p_flags | stream.flags)
            self._tally(last).resent += 1
            self._feed(Output(now, Side.SECONDARY, last.index, frame, headers))

    def _after_checkpoint(self, out: Output, end: int | None) -> Output | None:
        """What to replay of a secondary frame after a checkpoint.

        None: the primary had sent that output before the checkpoint, which (in COLO)
        brings the secondary to the primary's state, so it would not send it again (pure
        ACKs are always replayed: they carry the secondary's acknowledgements).  A
        segment that straddles the primary's progress is trimmed to the bytes beyond it
        (the engine anchors the secondary's first segment after a checkpoint at the
        primary's next offset: untrimmed, its bytes would be compared at the wrong offset).
        """
        key = out.headers.key
        synced = self._synced.get(key)
        if synced is None or end is None:
            return out
        incarnation, p_end, p_flags = synced
        h = out.headers
        if self.streams.current(key, Side.SECONDARY) != incarnation:
            del self._synced[key]
            return out
        if not h.payload and not h.flags & _CONTROL:
            return out  # a pure ACK: the secondary's acknowledgements still count
        if end <= p_end and not h.flags & _CONTROL & ~p_flags:
            return None
        del self._synced[key]  # past the sync point: compare from here on
        start = end - len(h.payload) - (1 if h.flags & TCP_FIN else 0)
        if not h.payload or start >= p_end or h.l4 < 0:
            return out
        cut = min(p_end - start, len(h.payload))
        frame = rebuild_tcp(out.data, h, h.seq + cut, h.payload[cut:], h.flags)
        headers = parse(frame)
        if headers is None:
            return out
        self._tally(out).trimmed += 1
        return Output(out.time_ms, out.side, out.index, frame, headers)

    # -- main loop -------------------------------------------------------------
    def push(self, out: Output) -> None:
        self._advance(out.time_ms)
        self._now = out.time_ms
        tally = self._tally(out)
        tally.frames[out.side] += 1
        tally.bytes[out.side] += payload_len(out.headers)
        end = self.streams.add(out.side, out.headers, out.data)
        if out.side == Side.SECONDARY:
            if out.headers.tcp:
                self._last_secondary[out.headers.key] = out
            replay = self._after_checkpoint(out, end)
            if replay is None:
                tally.covered += 1
                return
            out = replay
        self._feed(out)

    def _feed(self, out: Output) -> None:
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
