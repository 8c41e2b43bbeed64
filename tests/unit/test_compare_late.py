"""Frames that arrive after a TCP connection retired (docs/compare.md, "Retirement").

Both cases come from integration: the secondary VM running ahead of the primary
(``colo-proxy diff``), and the NFQUEUE demo where the primary retransmits and resends
after the connection's FIN was already verified.  Every frame here is crafted with
scapy, in the order the datapath pushed it.
"""

from __future__ import annotations

import pytest
from test_compare_parse import Harness, tcp

from colo_proxy.compare import DropReason

MATCHED = DropReason.MATCHED
VERIFIED = DropReason.VERIFIED
CLIENT_ISN = 269_037_240
REQUEST = 98  # bytes of the client's GET
ACK = CLIENT_ISN + 1 + REQUEST  # the guest's ack once it read the request
MSS = 1460


def body(n: int) -> bytes:
    """A response whose every 1460-byte segment differs from the others."""
    head = b"HTTP/1.1 200 OK\r\nServer: colo-demo/1\r\n\r\n"
    return (head + bytes((i * 7 + i // 251) & 0xFF for i in range(n)))[:n]


def segments(isn: int, data: bytes, start: int = 0, flags: str = "PA",
             ack: int = ACK) -> list[bytes]:
    """``data[start:]`` cut at the MSS, as NFQUEUE hands over a GSO burst."""
    return [tcp(isn + 1 + off, data[off:off + MSS], flags=flags, ack=ack)
            for off in range(start, len(data), MSS)]


def http_exchange(isn: int, data: bytes) -> list[bytes]:
    """The guest's frames of one HTTP/1.0-style exchange: SYN-ACK, ACK of the
    request, the response, FIN, and the final ACK of the client's FIN."""
    end = isn + 1 + len(data)
    return [tcp(isn, flags="SA", ack=CLIENT_ISN + 1), tcp(isn + 1, flags="A", ack=ACK),
            *segments(isn, data), tcp(end, flags="FA", ack=ACK),
            tcp(end + 1, flags="A", ack=ACK + 1)]


@pytest.mark.parametrize(("pisn", "sisn"), [(695_752_988, 695_752_988), (1000, 5_000_000)])
def test_secondary_pushes_a_whole_exchange_before_the_primary(pisn: int, sisn: int) -> None:
    """Bug: the primary's FIN release retired the connection, so its final pure ACK
    opened a fresh one with no secondary ack seen and waited for a TIMEOUT."""
    h = Harness(compare_timeout_ms=3000)
    data = body(3000)
    for i, frame in enumerate(http_exchange(sisn, data)):
        h.s(frame, f"s{i}", dt=0)
    frames = http_exchange(pisn, data)
    for i, frame in enumerate(frames):
        h.p(frame, f"p{i}", dt=0)
    assert h.released == [f"p{i}" for i in range(len(frames))]
    assert h.tick(5000) == []
    assert h.requests == []
    assert h.engine.stats.held_frames_now == 0
    assert h.engine.stats.connections_now == 0
    h.assert_consistent()


def test_late_primary_fin_retransmission_after_the_secondary_ran_ahead() -> None:
    h = Harness()
    data = body(100)
    for i, frame in enumerate(http_exchange(5_000_000, data)):
        h.s(frame, f"s{i}", dt=0)
    for i, frame in enumerate(http_exchange(1000, data)[:-1]):
        h.p(frame, f"p{i}", dt=0)
    # The client's ACK of the FIN got lost: the primary resends its FIN, then acks.
    assert h.p(tcp(1000 + 101, flags="FA", ack=ACK), "p-fin-rtx") == [("release", "p-fin-rtx")]
    assert h.p(tcp(1000 + 102, flags="A", ack=ACK + 1), "p-last") == [("release", "p-last")]
    assert h.tick(5000) == []
    assert h.requests == []
    h.assert_consistent()


@pytest.mark.parametrize(("pisn", "sisn"), [(695_752_988, 695_752_988), (1000, 5_000_000)])
def test_primary_resends_after_its_fin_was_verified(pisn: int, sisn: int) -> None:
    """The demo's false payload-mismatch at "offset 0" (a GET /static/page.html).

    The secondary sent its whole response 220 ms early and retransmitted its first
    segment.  The datapath then pushed the primary's response and FIN, which verified
    and retired the connection, and right behind them the primary's RTO
    retransmission of the first segment.  When the client acked that segment, both
    VMs resent the rest; the datapath pushed the secondary's copies first.  The
    retired connection's numbering was lost: the retransmission anchored at offset 0,
    the secondary's next segment (stream offset 1460) at offset 0 too, and
    ``HTTP/1.1 200 OK`` was compared with the middle of the body.
    """
    h = Harness(compare_timeout_ms=3000)
    data = body(6265)
    end = len(data)
    s_frames = http_exchange(sisn, data)
    p_frames = http_exchange(pisn, data)
    for i, frame in enumerate(s_frames[:-1]):  # SYN-ACK, ACK, 5 segments, FIN
        h.s(frame, f"s{i}", dt=0)
    h.s(tcp(sisn + 1, data[:MSS], flags="A"), "s-rto", dt=208)
    for i, frame in enumerate(p_frames[:-1]):
        h.p(frame, f"p{i}", dt=0)
    assert h.p(tcp(pisn + 1, data[:MSS], flags="A"), "p-rto", dt=208) == [("release", "p-rto")]
    # The client acked the first segment: both resend the rest and their FIN.
    for i, frame in enumerate(segments(sisn, data, MSS)):
        h.s(frame, f"s-again{i}", dt=0)
    h.s(tcp(sisn + 1 + end, flags="FA"), "s-fin-again", dt=0)
    for i, frame in enumerate(segments(pisn, data, MSS)):
        assert h.p(frame, f"p-again{i}", dt=0) == [("release", f"p-again{i}")]
    assert h.p(tcp(pisn + 1 + end, flags="FA"), "p-fin-again", dt=0) == [
        ("release", "p-fin-again")]
    # The client acks the FIN; the guests' last ACKs.
    h.s(s_frames[-1], "s-last", dt=1)
    assert h.p(p_frames[-1], "p-last", dt=0) == [("release", "p-last")]
    assert h.tick(5000) == []
    assert h.requests == []
    assert h.engine.stats.held_frames_now == 0
    assert set(h.dropped()) == set(h.dropped(MATCHED)) | set(h.dropped(VERIFIED))
    h.assert_consistent()


def test_retired_connection_memory_is_bounded() -> None:
    """Retired connections are remembered in a bounded table, oldest forgotten first."""
    from colo_proxy.compare.engine import RETIRED_MAX

    h = Harness()
    for port in range(RETIRED_MAX + 10):
        h.p(tcp(1000, flags="SA", sport=port + 1), f"p{port}", dt=0)
        h.s(tcp(1000, flags="SA", sport=port + 1), f"s{port}", dt=0)
        h.p(tcp(1001, flags="FA", sport=port + 1), f"pf{port}", dt=0)
        h.s(tcp(1001, flags="FA", sport=port + 1), f"sf{port}", dt=0)
    assert h.engine.stats.connections_now == 0
    assert h.engine.retired_now == RETIRED_MAX
    h.assert_consistent()


def test_new_syn_on_a_retired_connections_ports_starts_afresh() -> None:
    h = Harness()
    for i, frame in enumerate(http_exchange(1000, body(10))):
        h.p(frame, f"p{i}", dt=0)
        h.s(frame, f"s{i}", dt=0)
    assert h.requests == []
    # Port reuse: new ISNs, and the new response differs at its offset 0 from the old.
    h.p(tcp(900_000, flags="SA", ack=CLIENT_ISN + 9), "p-syn2")
    assert h.s(tcp(400_000, flags="SA", ack=CLIENT_ISN + 9), "s-syn2") == [
        ("drop", "s-syn2", MATCHED), ("release", "p-syn2")]
    h.p(tcp(900_001, b"new", ack=CLIENT_ISN + 9), "p1")
    assert h.s(tcp(400_001, b"new", ack=CLIENT_ISN + 9), "s1") == [
        ("drop", "s1", MATCHED), ("release", "p1")]
    assert h.requests == []
    h.assert_consistent()


def test_a_retired_connection_is_listed_for_a_while_with_its_final_counts() -> None:
    """A periodic reporter (the datapaths' stats events) sees every connection at least
    once, with its final counts, even one that opened and closed between two reports."""
    from colo_proxy.compare.engine import RETIRED_VISIBLE_MS

    h = Harness()
    for i, frame in enumerate(http_exchange(1000, body(100))):
        h.p(frame, f"p{i}", dt=0)
        h.s(frame, f"s{i}", dt=0)
    assert h.engine.stats.connections_now == 0
    (conn,) = h.engine.connections()
    assert conn.retired and conn.bytes_matched == 100 and conn.frames_matched == 5
    assert h.engine.conn_stats(conn.key) == conn
    h.tick(RETIRED_VISIBLE_MS - 1)
    assert [c.key for c in h.engine.connections()] == [conn.key]
    h.tick(2)
    assert list(h.engine.connections()) == []
    assert h.engine.conn_stats(conn.key) == conn  # still remembered for late frames
    # A late frame brings it back as a tracked connection.
    h.p(tcp(1000 + 102, flags="A", ack=ACK + 1), "p-late")
    (back,) = h.engine.connections()
    assert back.retired and back.frames_matched == 6  # released, and retired again
    h.assert_consistent()
