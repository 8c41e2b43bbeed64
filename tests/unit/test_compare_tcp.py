"""TCP stream comparison rules (docs/compare.md, "TCP")."""

from __future__ import annotations

import pytest
from test_compare_parse import Harness, key_tcp, tcp

from colo_proxy.compare import DropReason, Reason

MATCHED = DropReason.MATCHED
VERIFIED = DropReason.VERIFIED
DIVERGED = DropReason.DIVERGED
PISN, SISN = 1000, 5_000_000  # different initial sequence numbers on the two sides
CLIENT_ISN = 70_000


def handshake(h: Harness, pisn: int = PISN, sisn: int = SISN) -> None:
    """Both sides answer the client's SYN with a SYN-ACK (guest is the server)."""
    assert h.p(tcp(pisn, flags="SA", ack=CLIENT_ISN + 1), "p-syn") == []
    assert h.s(tcp(sisn, flags="SA", ack=CLIENT_ISN + 1), "s-syn") == [
        ("drop", "s-syn", MATCHED), ("release", "p-syn")]


ACK = CLIENT_ISN + 1


def test_identical_stream_handshake_data_fin_and_retire() -> None:
    h = Harness()
    handshake(h)
    assert h.p(tcp(PISN + 1, b"hello", ack=ACK), "p1") == []
    assert h.s(tcp(SISN + 1, b"hello", ack=ACK), "s1") == [
        ("drop", "s1", MATCHED), ("release", "p1")]
    assert h.s(tcp(SISN + 6, b" world", ack=ACK), "s2") == []
    assert h.p(tcp(PISN + 6, b" world", ack=ACK), "p2") == [
        ("release", "p2"), ("drop", "s2", MATCHED)]
    assert h.p(tcp(PISN + 12, flags="FA", ack=ACK), "p-fin") == []
    assert h.s(tcp(SISN + 12, flags="FA", ack=ACK), "s-fin") == [
        ("release", "p-fin"), ("drop", "s-fin", MATCHED)]
    assert h.requests == []
    assert h.engine.stats.connections_now == 0  # FIN verified: the connection retired
    assert h.engine.stats.bytes_compared == 11
    h.assert_consistent()


@pytest.mark.parametrize("at", [0, 1, 700, 1023])
def test_one_byte_mismatch_reports_the_stream_offset(at: int) -> None:
    h = Harness()
    handshake(h)
    h.p(tcp(PISN + 1, b"a" * 100), "p0")
    h.s(tcp(SISN + 1, b"a" * 100), "s0")
    good = bytes(range(256)) * 4
    bad = good[:at] + bytes([good[at] ^ 0xFF]) + good[at + 1:]
    assert h.p(tcp(PISN + 101, good), "p1") == []
    assert h.s(tcp(SISN + 101, bad), "s1") == [
        ("checkpoint", Reason.PAYLOAD_MISMATCH), ("drop", "s1", DIVERGED)]
    div = h.requests[0].divergence
    assert div is not None
    assert div.offset == 100 + at
    assert div.primary == good[at:at + 64]
    assert div.secondary == bad[at:at + 64]
    stats = h.engine.conn_stats(key_tcp())
    assert stats is not None and stats.first_divergence == div
    assert stats.held_primary == 1 and stats.checkpoint_requests == 1
    h.assert_consistent()


def test_primary_one_segment_secondary_two() -> None:
    h = Harness()
    handshake(h)
    data = bytes(range(256)) * 4
    assert h.p(tcp(PISN + 1, data), "p") == []
    assert h.s(tcp(SISN + 1, data[:512]), "s1") == [("drop", "s1", MATCHED)]
    assert h.s(tcp(SISN + 513, data[512:]), "s2") == [("drop", "s2", MATCHED), ("release", "p")]
    assert h.requests == []


def test_primary_two_segments_secondary_one() -> None:
    h = Harness()
    handshake(h)
    data = bytes(range(256)) * 4
    assert h.p(tcp(PISN + 1, data[:512]), "p1") == []
    assert h.p(tcp(PISN + 513, data[512:]), "p2") == []
    assert h.s(tcp(SISN + 1, data), "s") == [
        ("drop", "s", MATCHED), ("release", "p1"), ("release", "p2")]
    assert h.requests == []


def test_segmentation_crossing_boundaries_and_secondary_first() -> None:
    h = Harness()
    handshake(h)
    data = bytes(range(200)) * 5
    for i, (a, b) in enumerate([(0, 300), (300, 600), (600, 1000)]):
        h.p(tcp(PISN + 1 + a, data[a:b]), f"p{i}")
    h.s(tcp(SISN + 1, data[:450]), "s0")
    h.s(tcp(SISN + 451, data[450:]), "s1")
    assert h.released == ["p-syn", "p0", "p1", "p2"]
    assert h.dropped(MATCHED) == ["s-syn", "s0", "s1"]
    # The secondary ahead: its bytes wait for the primary's.
    h.s(tcp(SISN + 1001, b"xyz" * 100), "s2")
    assert h.p(tcp(PISN + 1001, b"xyz" * 50), "p3") == [("release", "p3")]
    assert h.p(tcp(PISN + 1151, b"xyz" * 50), "p4") == [("release", "p4"), ("drop", "s2", MATCHED)]
    assert h.requests == []
    h.assert_consistent()


@pytest.mark.parametrize("sisn", [PISN + 77, PISN - 77, 0xFFFFFFF0, 2**31 + PISN])
def test_different_isns_and_wraparound(sisn: int) -> None:
    h = Harness()
    handshake(h, sisn=sisn)
    for i in range(5):
        h.p(tcp(PISN + 1 + 10 * i, b"%010d" % i), f"p{i}")
        h.s(tcp(sisn + 1 + 10 * i, b"%010d" % i), f"s{i}")
    assert h.released == ["p-syn"] + [f"p{i}" for i in range(5)]
    assert h.requests == []


def test_primary_sequence_wraps_around() -> None:
    h = Harness()
    pisn = (1 << 32) - 50
    handshake(h, pisn=pisn, sisn=pisn)
    for i in range(10):
        h.p(tcp(pisn + 1 + 10 * i, b"%010d" % i), f"p{i}")
        h.s(tcp(pisn + 1 + 10 * i, b"%010d" % i), f"s{i}")
    assert h.released == ["p-syn"] + [f"p{i}" for i in range(10)]
    assert h.requests == []


def test_header_noise_is_ignored() -> None:
    h = Harness()
    handshake(h)
    h.p(tcp(PISN + 1, b"same bytes", ip_kw={"ttl": 64, "id": 1, "tos": 0},
            window=1000, options=[("Timestamp", (1, 2))]), "p1")
    out = h.s(tcp(SISN + 1, b"same bytes", ip_kw={"ttl": 3, "id": 999, "tos": 0x10},
                  window=65000, options=[("Timestamp", (777, 2)), ("NOP", None),
                                         ("SAckOK", b"")], chksum=0xDEAD), "s1")
    assert out == [("drop", "s1", MATCHED), ("release", "p1")]
    assert h.requests == []


def test_ack_ahead_is_held_until_the_secondary_acks() -> None:
    h = Harness()
    handshake(h)
    h.p(tcp(PISN + 1, b"data", ack=ACK + 500), "p1")
    assert h.s(tcp(SISN + 1, b"data", ack=ACK + 100), "s1") == [("drop", "s1", MATCHED)]
    assert h.released == ["p-syn"]
    assert h.s(tcp(SISN + 5, b"", flags="A", ack=ACK + 500), "s-ack") == [
        ("drop", "s-ack", VERIFIED), ("release", "p1")]
    assert h.requests == []


def test_ack_ahead_times_out_if_the_secondary_never_acks() -> None:
    h = Harness(compare_timeout_ms=3000)
    handshake(h)
    h.p(tcp(PISN + 1, b"data", ack=ACK + 500), "p1", dt=0)
    h.s(tcp(SISN + 1, b"data", ack=ACK + 100), "s1", dt=0)
    assert h.tick(2999) == []
    assert h.tick(1) == [("checkpoint", Reason.TIMEOUT)]
    assert h.checkpoint_done() == [("release", "p1")]


def test_pure_ack_from_the_primary() -> None:
    h = Harness()
    handshake(h)
    assert h.p(tcp(PISN + 1, flags="A", ack=ACK + 10), "pa") == []
    assert h.s(tcp(SISN + 1, flags="A", ack=ACK + 10), "sa") == [
        ("drop", "sa", VERIFIED), ("release", "pa")]
    # An ACK the secondary already covered goes out at once.
    assert h.p(tcp(PISN + 1, flags="A", ack=ACK + 5), "pb") == [("release", "pb")]


def test_retransmissions() -> None:
    h = Harness()
    handshake(h)
    h.p(tcp(PISN + 1, b"A" * 100), "p1")
    h.s(tcp(SISN + 1, b"A" * 100), "s1")
    # Primary retransmits verified bytes: released at once; secondary's: dropped VERIFIED.
    assert h.p(tcp(PISN + 1, b"A" * 100), "p1-again") == [("release", "p1-again")]
    assert h.s(tcp(SISN + 1, b"A" * 100), "s1-again") == [("drop", "s1-again", VERIFIED)]
    # Partial overlap: only the 50 new bytes are compared.
    assert h.p(tcp(PISN + 51, b"A" * 50 + b"B" * 50), "p2") == []
    assert h.s(tcp(SISN + 101, b"B" * 50), "s2") == [("drop", "s2", MATCHED), ("release", "p2")]
    # A retransmission of held (unverified) bytes waits for them.
    h.p(tcp(PISN + 151, b"C" * 10), "p3")
    assert h.p(tcp(PISN + 151, b"C" * 10), "p3-again") == []
    assert h.s(tcp(SISN + 151, b"C" * 10), "s3") == [
        ("drop", "s3", MATCHED), ("release", "p3"), ("release", "p3-again")]
    assert h.requests == []
    h.assert_consistent()


def test_out_of_order_segments_wait_for_the_gap() -> None:
    h = Harness()
    handshake(h)
    h.p(tcp(PISN + 11, b"2" * 10), "p2")
    h.p(tcp(PISN + 1, b"1" * 10), "p1")
    h.s(tcp(SISN + 21, b"3" * 10), "s3")
    assert h.s(tcp(SISN + 11, b"2" * 10), "s2") == []
    assert h.s(tcp(SISN + 1, b"1" * 10), "s1") == [
        ("drop", "s1", MATCHED), ("release", "p2"), ("release", "p1"), ("drop", "s2", MATCHED)]
    assert h.p(tcp(PISN + 21, b"3" * 10), "p3") == [("release", "p3"), ("drop", "s3", MATCHED)]
    assert h.requests == []
    h.assert_consistent()


def test_syn_from_the_guest_and_syn_mismatch() -> None:
    h = Harness()
    assert h.p(tcp(PISN, flags="S", ack=0), "p-syn") == []
    assert h.s(tcp(SISN, flags="S", ack=0), "s-syn") == [
        ("drop", "s-syn", MATCHED), ("release", "p-syn")]
    other = Harness()
    other.p(tcp(PISN, flags="SA", ack=ACK), "p-syn")
    assert other.s(tcp(SISN, flags="S", ack=0), "s-syn") == [
        ("checkpoint", Reason.CONTROL_MISMATCH), ("drop", "s-syn", DIVERGED)]
    assert other.requests[0].divergence is not None
    assert other.requests[0].divergence.offset == -1


def test_syn_ack_waits_for_the_secondary_ack_too() -> None:
    h = Harness()
    h.p(tcp(PISN, flags="SA", ack=ACK), "p-syn")
    # The secondary answered a different client SYN: its ack is behind.
    assert h.s(tcp(SISN, flags="SA", ack=ACK - 1), "s-syn") == [("drop", "s-syn", MATCHED)]
    assert h.s(tcp(SISN + 1, flags="A", ack=ACK), "s-ack") == [
        ("drop", "s-ack", VERIFIED), ("release", "p-syn")]


def test_fin_offsets_must_agree() -> None:
    h = Harness()
    handshake(h)
    h.p(tcp(PISN + 1, b"abc"), "p1")
    h.s(tcp(SISN + 1, b"abc"), "s1")
    h.p(tcp(PISN + 4, flags="FA"), "p-fin")
    assert h.s(tcp(SISN + 4, b"d", flags="FA"), "s-fin") == [
        ("checkpoint", Reason.CONTROL_MISMATCH), ("drop", "s-fin", DIVERGED)]
    div = h.requests[0].divergence
    assert div is not None and div.offset == 3 and div.secondary == b"d"


def test_data_beyond_the_other_sides_fin() -> None:
    h = Harness()
    handshake(h)
    h.s(tcp(SISN + 1, b"abc", flags="FA"), "s-fin")
    assert h.p(tcp(PISN + 1, b"abcdef"), "p1") == [("checkpoint", Reason.CONTROL_MISMATCH),
                                                  ("drop", "s-fin", DIVERGED)]
    assert h.released == ["p-syn"]


def test_fin_with_data_on_one_side_split_on_the_other() -> None:
    h = Harness()
    handshake(h)
    h.p(tcp(PISN + 1, b"bye", flags="FPA"), "p-fin")
    h.s(tcp(SISN + 1, b"bye"), "s1")
    assert h.s(tcp(SISN + 4, flags="FA"), "s-fin") == [
        ("release", "p-fin"), ("drop", "s-fin", MATCHED)]
    assert h.requests == []


def test_rst_rules() -> None:
    h = Harness()
    handshake(h)
    h.p(tcp(PISN + 1, b"xyz"), "p1")
    h.p(tcp(PISN + 4, flags="R", ack=0), "p-rst")
    assert h.s(tcp(SISN + 1, b"xyz"), "s1") == [("drop", "s1", MATCHED), ("release", "p1")]
    assert h.s(tcp(SISN + 4, flags="R", ack=0), "s-rst") == [
        ("drop", "s-rst", MATCHED), ("release", "p-rst")]
    assert h.requests == []
    assert h.engine.stats.connections_now == 0  # reset: retired
    # The secondary resets where the primary goes on sending: mismatch.
    m = Harness()
    handshake(m)
    m.s(tcp(SISN + 1, flags="R", ack=0), "s-rst")
    assert m.p(tcp(PISN + 1, b"more"), "p1") == [("checkpoint", Reason.CONTROL_MISMATCH),
                                                ("drop", "s-rst", DIVERGED)]


def test_diverged_connection_holds_while_others_flow() -> None:
    h = Harness()
    handshake(h)
    h.p(tcp(PISN + 1, b"AAAA"), "p1")
    h.s(tcp(SISN + 1, b"AAAB"), "s1")
    assert len(h.requests) == 1
    assert h.p(tcp(PISN + 5, b"more"), "p2") == []
    assert h.s(tcp(SISN + 5, b"more"), "s2") == [("drop", "s2", DIVERGED)]
    # Another connection keeps being compared and released.
    assert h.p(tcp(9, b"other", sport=81), "q1") == []
    assert h.s(tcp(9, b"other", sport=81), "r1") == [("drop", "r1", MATCHED), ("release", "q1")]
    # A second mismatch elsewhere is counted, not requested again.
    h.p(tcp(14, b"x", sport=81), "q2")
    assert h.s(tcp(14, b"y", sport=81), "r2") == [("drop", "r2", DIVERGED)]
    assert h.engine.stats.requests_suppressed == 1
    assert h.checkpoint_done() == [("release", "p1"), ("release", "p2"), ("release", "q2")]
    h.assert_consistent()


@pytest.mark.parametrize("secondary_numbering", ["own", "primary's"])
def test_checkpoint_rebases_the_stream(secondary_numbering: str) -> None:
    h = Harness()
    handshake(h)
    h.p(tcp(PISN + 1, b"0123456789"), "p1")
    h.s(tcp(SISN + 1, b"01234X"), "s1")
    assert h.requests[0].reason == Reason.PAYLOAD_MISMATCH
    h.p(tcp(PISN + 11, b"abc"), "p2")
    assert h.checkpoint_done() == [("release", "p1"), ("release", "p2")]
    assert not h.engine.checkpoint_pending
    # After the checkpoint the next bytes compare from the primary's next offset (13).
    snext = SISN + 7 if secondary_numbering == "own" else PISN + 14
    assert h.p(tcp(PISN + 14, b"next"), "p3") == []
    assert h.s(tcp(snext, b"next"), "s3") == [("drop", "s3", MATCHED), ("release", "p3")]
    assert h.p(tcp(PISN + 18, b"again"), "p4") == []
    assert h.s(tcp(snext + 4, b"AGAIN"), "s4")[0] == ("checkpoint", Reason.PAYLOAD_MISMATCH)
    div = h.requests[-1].divergence
    assert div is not None and div.offset == 17
    h.assert_consistent()


def test_checkpoint_secondary_retransmission_in_primary_numbering() -> None:
    h = Harness()
    handshake(h, sisn=PISN)
    h.p(tcp(PISN + 1, b"abcdef"), "p1")
    h.s(tcp(PISN + 1, b"abcXYZ"), "s1")
    h.checkpoint_done()
    # Restored from the primary, the secondary retransmits the released bytes first.
    assert h.s(tcp(PISN + 1, b"abcdef"), "s-rtx") == [("drop", "s-rtx", VERIFIED)]
    h.p(tcp(PISN + 7, b"gh"), "p2")
    assert h.s(tcp(PISN + 7, b"gh"), "s2") == [("drop", "s2", MATCHED), ("release", "p2")]
    assert len(h.requests) == 1


def test_checkpoint_secondary_ack_is_reset_to_the_primarys() -> None:
    h = Harness()
    handshake(h)
    h.p(tcp(PISN + 1, b"ab", ack=ACK + 40), "p1")
    h.s(tcp(SISN + 1, b"aX", ack=ACK + 40), "s1")
    h.checkpoint_done()
    assert h.p(tcp(PISN + 3, flags="A", ack=ACK + 40), "p-ack") == [("release", "p-ack")]
    assert h.p(tcp(PISN + 3, flags="A", ack=ACK + 41), "p-ack2") == []


@pytest.mark.parametrize("delta", [0, 77, -77, 2**31])
@pytest.mark.parametrize("first", ["primary", "secondary"])
def test_mid_stream_start_without_syn(delta: int, first: str) -> None:
    """A numbering 77 bytes off is recognised by content: at least EVIDENCE (16) bytes
    of the first segment equal the other side's at the next offset
    (test_compare_numbering.py covers the primary's numbering, reordered)."""
    h = Harness()
    pseq, sseq = 777_000, 777_000 + delta
    late = b"late response 16+"
    if first == "primary":
        assert h.p(tcp(pseq, late), "p1") == []
        assert h.s(tcp(sseq, late), "s1") == [("drop", "s1", MATCHED), ("release", "p1")]
    else:
        assert h.s(tcp(sseq, late), "s1") == []
        assert h.p(tcp(pseq, late), "p1") == [("release", "p1"), ("drop", "s1", MATCHED)]
    h.p(tcp(pseq + len(late), b"r"), "p2")
    assert h.s(tcp(sseq + len(late), b"r"), "s2") == [("drop", "s2", MATCHED),
                                                      ("release", "p2")]
    assert h.requests == []


def test_late_ack_and_fin_retransmission_after_retirement() -> None:
    h = Harness()
    handshake(h)
    h.p(tcp(PISN + 1, b"bye", flags="FPA", ack=ACK), "p-fin")
    h.s(tcp(SISN + 1, b"bye", flags="FPA", ack=ACK), "s-fin")
    assert h.engine.stats.connections_now == 0
    # Both ACK the client's FIN, then the client retransmits it and both re-send theirs.
    # The retired connection kept its numbering: the FIN is known verified.
    assert h.p(tcp(PISN + 5, flags="A", ack=ACK + 1), "p-last") == []
    assert h.s(tcp(SISN + 5, flags="A", ack=ACK + 1), "s-last") == [
        ("drop", "s-last", VERIFIED), ("release", "p-last")]
    assert h.p(tcp(PISN + 4, flags="FA", ack=ACK + 1), "p-fin-rtx") == [("release", "p-fin-rtx")]
    assert h.s(tcp(SISN + 4, flags="FA", ack=ACK + 1), "s-fin-rtx") == [
        ("drop", "s-fin-rtx", VERIFIED)]
    assert h.requests == []
    assert h.engine.stats.connections_now == 0
    h.assert_consistent()


def test_reopen_on_the_same_ports_after_close() -> None:
    h = Harness()
    handshake(h)
    h.p(tcp(PISN + 1, flags="FA"), "p-fin")
    h.s(tcp(SISN + 1, flags="FA"), "s-fin")
    assert h.released[-1] == "p-fin"
    # The client's final ACK is answered by nothing; the port is reused with new ISNs.
    handshake(h, pisn=PISN + 100_000, sisn=SISN + 300_000)
    h.p(tcp(PISN + 100_001, b"new"), "p1")
    assert h.s(tcp(SISN + 300_001, b"new"), "s1") == [("drop", "s1", MATCHED), ("release", "p1")]
    assert h.requests == []


def test_ipv6_and_vlan_separation() -> None:
    h = Harness()
    h.p(tcp(5, b"v6 data", v6=True), "p6")
    assert h.s(tcp(5, b"v6 data", v6=True), "s6") == [("drop", "s6", MATCHED), ("release", "p6")]
    h.p(tcp(5, b"tagged", vlan=7), "p7")
    assert h.s(tcp(5, b"tagged", vlan=8), "s8") == []  # a different connection
    assert h.s(tcp(5, b"tagged", vlan=7), "s7") == [("drop", "s7", MATCHED), ("release", "p7")]
    keys = {c.key.vlan for c in h.engine.connections()}
    assert keys == {-1, 7, 8}


def test_vnet_header_is_skipped_and_not_compared() -> None:
    h = Harness()
    h.p(b"\x01" * 12 + tcp(5, b"payload"), "p1", vnet=12)
    assert h.s(b"\x02" * 12 + tcp(5, b"payload"), "s1", vnet=12) == [
        ("drop", "s1", MATCHED), ("release", "p1")]


def test_urgent_and_flag_noise() -> None:
    h = Harness()
    handshake(h)
    h.p(tcp(PISN + 1, b"data", flags="PA"), "p1")
    assert h.s(tcp(SISN + 1, b"data", flags="A"), "s1") == [
        ("drop", "s1", MATCHED), ("release", "p1")]


def test_idle_connection_is_rebased_on_its_next_frame_after_a_checkpoint() -> None:
    h = Harness()
    handshake(h)
    h.p(tcp(PISN + 1, b"abc"), "p1")
    assert h.s(tcp(SISN + 1, b"abc"), "s1") == [("drop", "s1", MATCHED), ("release", "p1")]
    # Another connection diverges; the checkpoint finds nothing held on this one.
    h.p(tcp(9, b"x", sport=81), "q1")
    h.s(tcp(9, b"y", sport=81), "r1")
    assert h.checkpoint_done() == [("release", "q1")]
    # The SVM, restored from the PVM, goes on in the PVM's numbering.
    assert h.p(tcp(PISN + 4, b"def"), "p2") == []
    assert h.s(tcp(PISN + 4, b"def"), "s2") == [("drop", "s2", MATCHED), ("release", "p2")]
    assert len(h.requests) == 1
    h.assert_consistent()
