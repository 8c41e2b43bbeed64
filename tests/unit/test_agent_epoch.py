"""The epoch rule (colo_proxy/agent/epoch.py) with the real comparison engine.

The race of issue 8: at RESUME the SVM has already run for 0.2-3.9 ms, so a frame
read between the SVM's resume and the flush belongs to the new epoch.  Without
the fence, the flush drops such a secondary frame (its PVM counterpart then waits
for the compare timeout) and releases such a primary frame uncompared.
"""

from __future__ import annotations

from test_compare_parse import tcp, udp

from colo_proxy.agent.epoch import EpochGate, releases
from colo_proxy.compare import Engine
from colo_proxy.compare.model import Config, Decision, DropReason, Reason, Side

P, S = Side.PRIMARY, Side.SECONDARY


class Rig:
    def __init__(self) -> None:
        self.now = 0.0
        self.engine = Engine(Config(compare_timeout_ms=3000))
        self.out: list[Decision] = []
        self.gate = EpochGate(self.engine, solo=False)

    def push(self, side: Side, frame: bytes, tag: str) -> list[Decision]:
        self.now += 1
        got = self.gate.push(side, frame, self.now, tag)
        self.out.extend(got)
        return got

    def flush(self) -> None:
        """RESUME: what the seam does on DatapathControl.flush (routes the decisions)."""
        self.out.extend(self.gate.checkpoint_done(self.now))

    def unfence(self) -> None:
        self.out.extend(self.gate.unfence())

    def enter_solo(self) -> None:
        self.out.extend(self.gate.enter_solo(self.now))

    def released(self) -> list[object]:
        return releases(self.out)


def _mismatch_then_checkpoint(r: Rig) -> None:
    r.push(P, udp(b"old-p"), "P-old")
    got = r.push(S, udp(b"old-s"), "S-old")
    assert any(getattr(d, "reason", None) == Reason.PAYLOAD_MISMATCH for d in got)


def test_secondary_frame_between_svm_resume_and_flush_is_kept() -> None:
    r = Rig()
    _mismatch_then_checkpoint(r)
    r.gate.fence()                                  # STOP seen
    r.push(S, udp(b"new", sport=7), "S-new")        # SVM already running again
    assert r.gate.parked == 1
    r.flush()                                  # RESUME seen: flush
    assert r.released() == ["P-old"]
    assert r.engine.stats.dropped.get(DropReason.CHECKPOINT, 0) == 0  # S-new kept
    r.push(P, udp(b"new", sport=7), "P-new")        # the PVM's counterpart
    assert r.released() == ["P-old", "P-new"]       # matched, no timeout needed
    assert r.engine.stats.checkpoint_requests == {Reason.PAYLOAD_MISMATCH: 1}


def test_primary_frame_between_resume_and_flush_is_compared_not_released() -> None:
    r = Rig()
    _mismatch_then_checkpoint(r)
    r.gate.fence()
    r.push(P, udp(b"new-p", sport=7), "P-new")      # new epoch, read before the flush
    r.flush()
    assert r.released() == ["P-old"]                # P-new is held, not released uncompared
    assert r.engine.stats.held_frames_now == 1
    r.push(S, udp(b"different", sport=7), "S-new")
    assert r.released() == ["P-old"]                # a divergence is caught in the new epoch
    assert r.engine.checkpoint_pending


def test_without_the_fence_the_race_loses_the_secondary() -> None:
    """The same sequence flushed at RESUME without the gate (today's behaviour)."""
    r = Rig()
    _mismatch_then_checkpoint(r)
    r.push(S, udp(b"new", sport=7), "S-new")        # read before the flush: old epoch
    r.flush()
    assert r.engine.stats.dropped[DropReason.CHECKPOINT] == 1  # S-new dropped
    r.push(P, udp(b"new", sport=7), "P-new")
    assert r.released() == ["P-old"]                # P-new waits for the compare timeout


def test_tcp_stream_continues_across_the_fence() -> None:
    r = Rig()
    r.push(P, tcp(1000, b"A" * 10, flags="S"), "P-syn")
    r.push(S, tcp(1000, b"", flags="S"), "S-syn")
    r.push(P, tcp(1001, b"hello"), "P1")
    r.push(S, tcp(1001, b"hellX"), "S1")            # diverges
    r.gate.fence()
    r.push(S, tcp(1006, b"world"), "S2")
    r.push(P, tcp(1006, b"world"), "P2")            # both parked
    assert r.gate.parked == 2
    r.flush()
    assert "P2" in r.released()
    assert r.gate.counters.flushes == 1


def test_unfence_without_resume_admits_and_holds() -> None:
    r = Rig()
    _mismatch_then_checkpoint(r)
    r.gate.fence()
    r.push(P, udp(b"x", sport=9), "P-x")
    r.unfence()                                # no RESUME in time
    assert r.gate.parked == 0 and not r.gate.fenced
    assert r.released() == []                       # everything still held, nothing lost
    assert r.engine.stats.held_frames_now == 2  # P-old and P-x


def test_solo_releases_everything_held_and_passes_primaries() -> None:
    r = Rig()
    _mismatch_then_checkpoint(r)
    r.gate.fence()
    r.push(P, udp(b"parked"), "P-parked")
    r.push(S, udp(b"parked"), "S-parked")
    r.enter_solo()                             # failover on the primary
    assert r.released() == ["P-old", "P-parked"]
    assert r.push(P, udp(b"later"), "P-later") != []
    assert r.push(S, udp(b"later"), "S-later") == []
    assert r.released() == ["P-old", "P-parked", "P-later"]
    assert r.gate.counters.solo_dropped == 2
