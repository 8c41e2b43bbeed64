"""The secondary's TCP numbering (docs/compare.md, "The secondary's numbering").

The secondary's segments may carry

* its own numbering (``native``: its own ISN, the namespace demo);
* the primary's numbering after a SYN-ACK in its own ISN (``rewritten``: QEMU's
  filter-rewriter, see /work/shared/reference/real-colo-pair.md);
* the primary's numbering throughout (``translated``: a secondary-side module that
  also translates the SYN-ACK).

Each must compare with no checkpoint, whether the SYNs were seen (``syn``), the
connection is first seen mid-stream (``midstream``) or the engine re-anchors after a
checkpoint (``checkpoint``), however both streams are cut and however the secondary's
segments are ordered.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_compare_parse import Harness, tcp

from colo_proxy.compare import CheckpointRequest, Drop, DropReason, Reason, Release
from colo_proxy.compare import engine as engine_module
from colo_proxy.compare.tcp import AHEAD_WINDOW, REANCHOR_WINDOW, sdiff

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MATCHED = DropReason.MATCHED
CLIENT_ACK = 70_001
PREFIX_P, PREFIX_S = b"GET-ME", b"GET-ME"[:-1] + b"!"  # diverge at their last byte
FAR = REANCHOR_WINDOW + AHEAD_WINDOW
"""Numberings further apart than this cannot be mistaken for each other by position."""


def counter_bytes(n: int, salt: int) -> bytes:
    """n bytes no shift of which equals itself (a 16-bit counter): content decides."""
    return b"".join(((i + salt) & 0xFFFF).to_bytes(2, "big") for i in range(n // 2 + 1))[:n]


def _cuts(draw: st.DrawFn, n: int) -> list[tuple[int, int]]:
    points = sorted(set(draw(st.lists(st.integers(1, n - 1), max_size=8))))
    return list(itertools.pairwise([0, *points, n]))


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    numbering = draw(st.sampled_from(["native", "rewritten", "translated"]))
    anchoring = draw(st.sampled_from(["syn", "midstream", "checkpoint"]))
    n = draw(st.integers(2, 600))
    kind = draw(st.sampled_from(["counter", "random", "zeros"]))
    reorder = draw(st.sampled_from(["none", "swap", "shuffle"]))
    if numbering == "native" and anchoring == "midstream":
        # Without a SYN nothing tells the secondary's own numbering: its first
        # numbered segment must be the next byte (docs: "The secondary's numbering").
        reorder = "none"
    if anchoring != "syn" and reorder != "none" and kind != "counter":
        # A secondary whose first segment is not its lowest, with no SYN seen, is
        # placed by content; periodic content is ambiguous.
        kind = "counter"
    data = {"counter": counter_bytes(n, draw(st.integers(0, 0xFFFF))),
            "random": draw(st.binary(min_size=n, max_size=n)),
            "zeros": bytes(n)}[kind]
    pisn = draw(st.one_of(st.integers(0, 2**32 - 1),
                          st.integers(2**32 - n - 8, 2**32 - 1)))  # wraps inside the data
    # Real pairs have ISNs a few thousand apart (the same secret, clocks ~1 ms apart).
    sisn = draw(st.one_of(st.integers(0, 2**32 - 1), st.just(pisn),
                          st.integers(2**32 - n - 8, 2**32 - 1),
                          st.integers(-200_000, 200_000).map(lambda d: (pisn + d) % 2**32)))
    gap = abs(sdiff(sisn, pisn))
    if 0 < gap <= 2 * n + 16:
        sisn = pisn  # ISNs closer than the data span: ambiguous (docs), not tested here
    if numbering == "native" and anchoring == "midstream" \
            and 0 < abs(sdiff(sisn, pisn)) <= FAR + n + 16:
        # Within the windows of each other, a native secondary seen without a SYN reads
        # as the primary's numbering (docs).
        sisn = (pisn + 2**31) & 0xFFFFFFFF
    return {
        "numbering": numbering, "anchoring": anchoring, "data": data, "reorder": reorder,
        "p_cuts": _cuts(draw, n), "s_cuts": _cuts(draw, n), "pisn": pisn, "sisn": sisn,
        "fin": draw(st.booleans()) and reorder == "none",
        "order": draw(st.lists(st.booleans(), min_size=40, max_size=40)),
        "shuffle_seed": draw(st.integers(0, 2**16)),
    }


def _interleave(a: list[Any], b: list[Any], order: list[bool]) -> list[Any]:
    out: list[Any] = []
    i = j = 0
    for take_a in order * 30:
        if i < len(a) and (take_a or j == len(b)):
            out.append(a[i])
            i += 1
        elif j < len(b):
            out.append(b[j])
            j += 1
    return out + a[i:] + b[j:]


def _frames(c: dict[str, Any]) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]],
                                       list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(primary, secondary) frames before the data phase and in it."""
    data: bytes = c["data"]
    pisn, sisn = c["pisn"], c["sisn"]
    # Sequence number of stream offset 0 on each side, as the segments carry it.
    s_syn = pisn if c["numbering"] == "translated" else sisn
    s_data0 = sisn + 1 if c["numbering"] == "native" else pisn + 1
    p_data0 = pisn + 1
    p_pre: list[tuple[str, bytes]] = []
    s_pre: list[tuple[str, bytes]] = []
    if c["anchoring"] != "midstream":
        p_pre.append(("p-syn", tcp(pisn, b"", "SA", ack=CLIENT_ACK)))
        s_pre.append(("s-syn", tcp(s_syn, b"", "SA", ack=CLIENT_ACK)))
    if c["anchoring"] == "checkpoint":
        p_pre.append(("p-pre", tcp(p_data0, PREFIX_P, ack=CLIENT_ACK)))
        s_pre.append(("s-pre", tcp(s_data0, PREFIX_S, ack=CLIENT_ACK)))
        p_data0 += len(PREFIX_P)
        s_data0 += len(PREFIX_S)

    def seg(side: str, k: int, base: int, a: int, b: int) -> tuple[str, bytes]:
        flags = "FPA" if c["fin"] and b == len(data) else "PA"
        return f"{side}{k}", tcp((base + a) & 0xFFFFFFFF, data[a:b], flags, ack=CLIENT_ACK)

    p = [seg("p", k, p_data0, a, b) for k, (a, b) in enumerate(c["p_cuts"])]
    s = [seg("s", k, s_data0, a, b) for k, (a, b) in enumerate(c["s_cuts"])]
    if c["reorder"] == "swap" and len(s) > 1:
        s[0], s[1] = s[1], s[0]
    elif c["reorder"] == "shuffle":
        random.Random(c["shuffle_seed"]).shuffle(s)
    return p_pre, s_pre, p, s


def run_case(c: dict[str, Any]) -> Harness:
    p_pre, s_pre, p, s = _frames(c)
    h = Harness()
    # The SYN-ACKs first, in either order: the client sends nothing the secondary could
    # answer before it got the primary's SYN-ACK, which the engine saw first.
    for side, tag, frame in [*_interleave([("P", *x) for x in p_pre[:1]],
                                          [("S", *x) for x in s_pre[:1]], c["order"]),
                             *_interleave([("P", *x) for x in p_pre[1:]],
                                          [("S", *x) for x in s_pre[1:]], c["order"][1:])]:
        (h.p if side == "P" else h.s)(frame, tag)
    if c["anchoring"] == "checkpoint":
        assert [r.reason for r in h.requests] == [Reason.PAYLOAD_MISMATCH]
        h.checkpoint_done()
    else:
        assert h.requests == []
    start = len(h.log)
    for side, tag, frame in _interleave([("P", *x) for x in p], [("S", *x) for x in s],
                                        c["order"][::-1]):
        (h.p if side == "P" else h.s)(frame, tag)
    tail = h.log[start:]
    assert [d for d in tail if isinstance(d, CheckpointRequest)] == []
    released = [d.tag for d in tail if isinstance(d, Release)]
    assert released == [tag for tag, _ in p]
    dropped = sorted(str(d.tag) for d in tail if isinstance(d, Drop))
    assert dropped == sorted(tag for tag, _ in s)
    assert h.engine.stats.held_frames_now == 0
    h.assert_consistent()
    return h


@SETTINGS
@given(cases())
def test_every_numbering_compares_without_a_checkpoint(c: dict[str, Any]) -> None:
    h = run_case(c)
    compared = h.engine.stats.bytes_compared
    if c["anchoring"] == "midstream" and c["reorder"] != "none":
        # A secondary segment that arrives first anchors nothing below it when it is
        # alone: bytes before a mid-stream anchor count as verified (docs).
        assert compared <= len(c["data"])
    else:
        assert compared == len(c["data"])


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_numbering_decisions_are_the_same_with_and_without_the_fast_path(
        c: dict[str, Any]) -> None:
    fast = run_case(c).log
    saved = engine_module.FAST_MIN
    engine_module.FAST_MIN = 1 << 30
    try:
        general = run_case(c).log
    finally:
        engine_module.FAST_MIN = saved
    assert fast == general


# -- the cases of the issue, spelled out -------------------------------------------------

PISN, SISN = 2_350_745_442, 2_350_789_086  # from a real capture (real-colo-pair.md)


def test_filter_rewriter_numbering_with_the_syn_seen() -> None:
    """SYN-ACK in the secondary's ISN, every later segment in the primary's."""
    h = Harness()
    assert h.p(tcp(PISN, b"", "SA", ack=CLIENT_ACK), "p-syn") == []
    assert h.s(tcp(SISN, b"", "SA", ack=CLIENT_ACK), "s-syn") == [
        ("drop", "s-syn", MATCHED), ("release", "p-syn")]
    body = counter_bytes(3000, 7)
    h.p(tcp(PISN + 1, body[:1448], ack=CLIENT_ACK + 80), "p1")
    h.p(tcp(PISN + 1449, body[1448:2896], ack=CLIENT_ACK + 80), "p2")
    h.p(tcp(PISN + 2897, body[2896:], "FPA", ack=CLIENT_ACK + 80), "p3")
    assert h.s(tcp(PISN + 1, b"", "A", ack=CLIENT_ACK + 80), "s-ack") == [
        ("drop", "s-ack", DropReason.VERIFIED)]
    h.s(tcp(PISN + 1, body[:1000], ack=CLIENT_ACK + 80), "s1")
    h.s(tcp(PISN + 1001, body[1000:], "FPA", ack=CLIENT_ACK + 80), "s2")
    # A retransmitted SYN-ACK still carries the secondary's own ISN: not a new connection.
    assert h.s(tcp(SISN, b"", "SA", ack=CLIENT_ACK), "s-syn2") == [
        ("drop", "s-syn2", DropReason.VERIFIED)]
    assert h.requests == []
    assert h.released == ["p-syn", "p1", "p2", "p3"]
    h.assert_consistent()


@pytest.mark.parametrize("numbering", ["same", "shifted"])
@pytest.mark.parametrize("anchoring", ["midstream", "checkpoint"])
def test_first_secondary_segment_not_its_lowest(numbering: str, anchoring: str) -> None:
    """The issue's 0-of-3 case: three primaries, the secondary's arrive 2, 0, 1."""
    h = Harness()
    base = 777_000
    if anchoring == "checkpoint":
        h.p(tcp(base - 6, b"prefix"), "p-pre")
        h.s(tcp(base - 6, b"prefiX"), "s-pre")
        assert [r.reason for r in h.requests] == [Reason.PAYLOAD_MISMATCH]
        h.checkpoint_done()
    seqs = [base, base + 100, base + 200]
    for i, seq in enumerate(seqs):
        assert h.p(tcp(seq, bytes([65 + i]) * 100), f"p{i}") == []
    sbase = base if numbering == "same" else base + 77  # secondary seq +77 (QEMU case)
    if numbering == "same":
        for i in (2, 0, 1):
            h.s(tcp(sbase + 100 * i, bytes([65 + i]) * 100), f"s{i}")
    else:  # another numbering can only be placed if its first segment is the next byte
        for i in (0, 2, 1):
            h.s(tcp(sbase + 100 * i, bytes([65 + i]) * 100), f"s{i}")
    assert [r for r in h.requests if r.reason != Reason.PAYLOAD_MISMATCH] == []
    assert h.released[-3:] == ["p0", "p1", "p2"]
    assert len(h.requests) == (1 if anchoring == "checkpoint" else 0)
    h.assert_consistent()


def test_secondary_alone_first_then_primary_mid_stream() -> None:
    """The secondary's segments all arrive first, out of order, on an unknown connection."""
    h = Harness()
    data = counter_bytes(300, 3)
    for i in (1, 0, 2):
        assert h.s(tcp(5000 + 100 * i, data[100 * i:100 * i + 100]), f"s{i}") in (
            [], [("drop", f"s{i}", DropReason.VERIFIED)])
    for i in range(3):
        h.p(tcp(5000 + 100 * i, data[100 * i:100 * i + 100]), f"p{i}")
    assert h.requests == []
    assert h.released == ["p0", "p1", "p2"]
    h.assert_consistent()


def test_native_numbering_far_apart_is_not_taken_for_the_primarys() -> None:
    """Native ISNs: the secondary's own numbering is kept (the namespace demo)."""
    h = Harness()
    h.p(tcp(1000, b"", "SA"), "p-syn")
    h.s(tcp(1000 + 50_000, b"", "SA"), "s-syn")
    # The secondary is ahead: nothing of the primary to compare with yet.
    h.s(tcp(1000 + 50_001, b"0123456789"), "s1")
    h.p(tcp(1001, b"0123456789"), "p1")
    assert h.requests == []
    assert h.released == ["p-syn", "p1"]


def test_real_divergence_is_still_one_checkpoint_in_rewritten_numbering() -> None:
    h = Harness()
    h.p(tcp(PISN, b"", "SA"), "p-syn")
    h.s(tcp(SISN, b"", "SA"), "s-syn")
    h.p(tcp(PISN + 1, b"token=1234"), "p1")
    h.s(tcp(PISN + 1, b"token=9876"), "s1")
    assert [r.reason for r in h.requests] == [Reason.PAYLOAD_MISMATCH]
    div = h.requests[0].divergence
    assert div is not None and div.offset == 6


@pytest.mark.parametrize("gap", [2093, -2093, 43644, -43644])
def test_a_first_segment_that_diverges_is_reported_at_once(gap: int) -> None:
    """Close ISNs (real pairs: a few thousand apart): the secondary's first segment is
    at offset 0 in the primary's numbering, so a token in it is a mismatch there, not a
    reason to read it in the secondary's own numbering and wait for the timeout."""
    h = Harness()
    h.p(tcp(PISN, b"", "SA"), "p-syn")
    h.s(tcp(PISN + gap, b"", "SA"), "s-syn")
    h.p(tcp(PISN + 1, b"HTTP/1.1 200 OK\r\n\r\ntoken=1234"), "p1")
    h.s(tcp(PISN + 1, b"HTTP/1.1 200 OK\r\n\r\ntoken=9876"), "s1")
    assert [r.reason for r in h.requests] == [Reason.PAYLOAD_MISMATCH]
    div = h.requests[0].divergence
    assert div is not None and div.offset == 25


@pytest.mark.parametrize("first", ["primary", "secondary"])
def test_native_secondary_keeps_its_own_numbering_after_a_checkpoint(first: str) -> None:
    """The namespace demo: nobody restores the SVM, it goes on in its own numbering,
    ISNs 2093 apart."""
    h = Harness()
    sisn = PISN + 2093
    h.p(tcp(PISN, b"", "SA"), "p-syn")
    h.s(tcp(sisn, b"", "SA"), "s-syn")
    h.p(tcp(PISN + 1, b"token=1234;"), "p1")
    h.s(tcp(sisn + 1, b"token=9876;"), "s1")
    assert [r.reason for r in h.requests] == [Reason.PAYLOAD_MISMATCH]
    h.checkpoint_done()
    body = counter_bytes(40, 9)
    if first == "primary":
        h.p(tcp(PISN + 12, body), "p2")
        h.s(tcp(sisn + 12, body), "s2")
    else:
        h.s(tcp(sisn + 12, body), "s2")
        h.p(tcp(PISN + 12, body), "p2")
    assert len(h.requests) == 1
    assert h.released[-1] == "p2"
    h.assert_consistent()
