"""Engine-wide rules: timeouts, de-duplication, limits, passthrough, checkpoint release
order and statistics (docs/compare.md, "Timeouts", "Checkpoints", "Limits")."""

from __future__ import annotations

import ipaddress

import pytest
from test_compare_parse import Harness, tcp, udp

from colo_proxy.compare import DropReason, PassthroughRule, Reason, Release
from colo_proxy.compare.passthrough import parse_rule

MATCHED = DropReason.MATCHED


@pytest.mark.parametrize("side", ["primary", "secondary"])
def test_unmatched_frame_times_out_once(side: str) -> None:
    h = Harness(compare_timeout_ms=500)
    (h.p if side == "primary" else h.s)(udp(b"alone"), "F", dt=0)
    assert h.tick(499) == []
    assert h.tick(1) == [("checkpoint", Reason.TIMEOUT)]
    req = h.requests[0]
    assert req.time_ms == 500 and side in req.detail
    # No repetition while the checkpoint is pending (QEMU notifies every scan).
    assert h.tick(5000) == []
    assert h.engine.checkpoint_pending
    out = h.checkpoint_done()
    if side == "primary":
        assert out == [("release", "F")]
        release = h.log[-1]
        assert isinstance(release, Release) and release.held_ms == 5501
    else:
        assert out == [("drop", "F", DropReason.CHECKPOINT)]
    assert not h.engine.checkpoint_pending
    h.assert_consistent()


def test_timeout_is_also_noticed_on_push() -> None:
    h = Harness(compare_timeout_ms=100)
    h.p(udp(b"alone"), "P1", dt=0)
    assert h.p(udp(b"x", sport=1), "P2", dt=100) == [("checkpoint", Reason.TIMEOUT)]


def test_matched_frames_do_not_time_out_and_the_queue_stays_small() -> None:
    h = Harness(compare_timeout_ms=100)
    frames = [udp(b"%d" % i, sport=1000 + i) for i in range(50)]
    for i in range(5000):
        h.p(frames[i % 50], i, dt=1)
        h.s(frames[i % 50], -i, dt=1)
    assert h.requests == []
    assert len(h.engine._arrivals) <= 1  # lazily pruned: O(1) amortised
    h.assert_consistent()


def test_requests_are_deduplicated_until_checkpoint_done() -> None:
    h = Harness()
    h.p(udp(b"a", sport=1), "P1")
    assert h.s(udp(b"b", sport=1), "S1")[0] == ("checkpoint", Reason.PAYLOAD_MISMATCH)
    h.p(udp(b"a", sport=2), "P2")
    assert h.s(udp(b"c", sport=2), "S2") == [("drop", "S2", DropReason.DIVERGED)]
    assert h.engine.stats.requests_suppressed == 1
    assert h.engine.stats.checkpoint_requests == {Reason.PAYLOAD_MISMATCH: 1}
    h.checkpoint_done()
    h.p(udp(b"a", sport=3), "P3")
    assert h.s(udp(b"d", sport=3), "S3")[0] == ("checkpoint", Reason.PAYLOAD_MISMATCH)
    assert h.engine.stats.checkpoint_requests == {Reason.PAYLOAD_MISMATCH: 2}
    assert h.engine.stats.checkpoints_done == 1


def test_checkpoint_done_releases_in_arrival_order_across_connections() -> None:
    h = Harness()
    h.p(udp(b"1", sport=1), "A1")
    h.p(tcp(10, b"tcp-1"), "T1")
    h.s(udp(b"9", sport=2), "B-sec")
    h.p(udp(b"2", sport=1), "A2")
    h.p(tcp(15, b"tcp-2"), "T2")
    h.s(tcp(10, b"tcp-X"), "T-sec")  # diverges: T1, T2 held
    out = h.checkpoint_done()
    assert out == [("release", "A1"), ("release", "T1"), ("drop", "B-sec", DropReason.CHECKPOINT),
                   ("release", "A2"), ("release", "T2")]
    held = [d.held_ms for d in h.log[-5:] if isinstance(d, Release)]
    assert held == sorted(held, reverse=True)
    st = h.engine.stats
    assert (st.held_frames_now, st.held_bytes_now) == (0, 0)
    assert all(c.held_primary == c.held_secondary == 0 for c in h.engine.connections())
    h.assert_consistent()


def test_queue_limit_then_overflow() -> None:
    h = Harness(max_queue_per_conn=4)
    for i in range(4):
        assert h.p(udp(b"%d" % i), f"P{i}") == []
    assert h.p(udp(b"4"), "P4") == [("checkpoint", Reason.QUEUE_LIMIT)]
    for i in range(5, 8):
        assert h.p(udp(b"%d" % i), f"P{i}") == []
    assert h.p(udp(b"8"), "P8") == [("drop", "P8", DropReason.OVERFLOW)]
    assert h.engine.stats.overflow == 1
    # Other connections are untouched.
    h.p(udp(b"z", sport=7), "Q")
    assert h.s(udp(b"z", sport=7), "R") == [("release", "Q"), ("drop", "R", MATCHED)]
    assert h.checkpoint_done() == [("release", f"P{i}") for i in range(8)]
    h.assert_consistent()


def test_memory_limit_then_overflow() -> None:
    frame = udp(b"m" * 958)
    size = len(frame)
    h = Harness(max_held_bytes=3 * size)
    for i in range(3):
        assert h.p(frame, f"P{i}") == []
    assert h.s(udp(b"s" * 958, sport=1), "S3") == [("checkpoint", Reason.MEMORY_LIMIT)]
    for i in range(4, 6):
        h.p(frame, f"P{i}")
    assert h.p(frame, "P6") == [("drop", "P6", DropReason.OVERFLOW)]
    assert h.engine.stats.held_bytes_now == 6 * size
    h.assert_consistent()


def test_idle_connections_are_evicted_lru() -> None:
    h = Harness(max_connections=3)
    for port in (1, 2, 3):
        h.p(udp(b"x", sport=port), f"P{port}")
        h.s(udp(b"x", sport=port), f"S{port}")
    h.p(udp(b"x", sport=1), "P1b")  # connection 1 busy and recently used
    h.p(udp(b"y", sport=4), "P4")
    st = h.engine.stats
    assert (st.connections_evicted, st.connections_now) == (1, 3)
    ports = {c.key.sport for c in h.engine.connections()}
    assert ports == {1, 3, 4}
    assert h.requests == []


def test_connection_limit_with_busy_connections() -> None:
    h = Harness(max_connections=2)
    h.p(udp(b"x", sport=1), "P1")
    h.p(udp(b"x", sport=2), "P2")
    assert h.p(udp(b"x", sport=3), "P3") == [("checkpoint", Reason.CONNECTION_LIMIT)]
    assert h.p(udp(b"x", sport=4), "P4") == []
    assert h.p(udp(b"x", sport=5), "P5") == [("drop", "P5", DropReason.OVERFLOW)]
    assert h.engine.stats.connections_now == 4
    h.assert_consistent()


def test_passthrough_rules() -> None:
    h = Harness(passthrough=(parse_rule("proto=tcp,port=22"),
                             PassthroughRule(net=ipaddress.ip_network("10.9.0.0/16"))))
    assert h.p(tcp(1, b"ssh", sport=22), "P1") == [("release", "P1")]
    assert h.s(tcp(1, b"SSH", sport=22), "S1") == [("drop", "S1", DropReason.PASSTHROUGH)]
    assert h.p(udp(b"x", ip_kw={"dst": "10.9.1.1"}), "P2") == [("release", "P2")]
    assert h.p(udp(b"x"), "P3") == []  # not exempt
    assert h.engine.stats.passthrough == 2
    assert h.requests == []
    h.assert_consistent()


def test_conn_stats_and_counters() -> None:
    h = Harness()
    for i in range(3):
        h.p(tcp(100 + 4 * i, b"abcd"), f"P{i}")
        h.s(tcp(100 + 4 * i, b"abcd"), f"S{i}")
    h.p(udp(b"hello"), "U")
    (t, u) = sorted(h.engine.connections(), key=lambda c: c.key.proto)
    assert (t.frames_matched, t.bytes_matched, t.held_primary) == (3, 12, 0)
    assert (u.frames_matched, u.held_primary, u.first_divergence) == (0, 1, None)
    st = h.engine.stats
    assert st.frames == [4, 3]
    assert st.pairs_matched == 3 and st.released == 3
    assert st.dropped == {MATCHED: 3}
    assert st.held_frames_now == 1 and st.connections_now == 2
    assert st.as_dict()["frames"] == {"primary": 4, "secondary": 3}
    h.assert_consistent()
