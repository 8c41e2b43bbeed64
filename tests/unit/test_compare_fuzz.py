"""Property tests: the engine never raises on frame content, keeps its counters
consistent, and matches equal streams however they are cut, ordered or numbered."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_compare_parse import Harness, assert_counters_consistent, tcp, udp

from colo_proxy.compare import CheckpointRequest, Config, Engine, Reason, Release, Side
from colo_proxy.compare import engine as engine_module
from colo_proxy.compare.tcp import sdiff

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SEEDS = [
    tcp(1000, b"hello", "PA"), tcp(1000, b"", "SA"), tcp(7, b"x" * 40, "FPA", v6=True),
    tcp(1, b"q", vlan=5), udp(b"datagram"), udp(b"six", v6=True),
]


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, int]:
    """A frame and its vnet_hdr_len: random bytes, or a valid frame mangled."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=200)), draw(st.sampled_from([0, 0, 10, 12, 300, -1]))
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, len(frame) - 1))
        frame[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(frame)))
    frame = frame[:cut] if draw(st.booleans()) else frame
    vnet = draw(st.sampled_from([0, 0, 0, 12]))
    return bytes(vnet * b"\x00") + bytes(frame), vnet


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from([Side.PRIMARY, Side.SECONDARY]), frames(),
                          st.sampled_from(["push", "push", "push", "tick", "checkpoint"])),
                max_size=40),
       st.integers(1, 8))
def test_never_raises_and_counters_stay_consistent(
        steps: list[tuple[Side, tuple[bytes, int], str]], queue: int) -> None:
    engine = Engine(Config(compare_timeout_ms=50, max_queue_per_conn=queue,
                           max_held_bytes=2000, max_connections=4))
    now = 0.0
    pushed: list[int] = []
    decided: list[object] = []
    for i, (side, (frame, vnet), action) in enumerate(steps):
        now += 7
        if action == "push":
            out = engine.push(side, frame, now, i, vnet)
            pushed.append(i)
        elif action == "tick":
            out = engine.tick(now)
        else:
            out = engine.checkpoint_done(now)
        decided += [d.tag for d in out if not isinstance(d, CheckpointRequest)]
        assert_counters_consistent(engine)
    decided += [d.tag for d in engine.checkpoint_done(now + 1)]
    assert engine.stats.held_frames_now == 0
    assert sorted(decided) == pushed  # exactly one Release or Drop per frame
    assert_counters_consistent(engine)


def _cuts(draw: st.DrawFn, n: int) -> list[tuple[int, int]]:
    points = sorted(set(draw(st.lists(st.integers(1, n - 1), max_size=8))))
    edges = [0, *points, n]
    return list(itertools.pairwise(edges))


@st.composite
def streams(draw: st.DrawFn) -> dict[str, Any]:
    data = draw(st.binary(min_size=2, max_size=400))
    return {
        "data": data,
        "p_cuts": _cuts(draw, len(data)),
        "s_cuts": _cuts(draw, len(data)),
        "pisn": draw(st.integers(0, 2**32 - 1)),
        "sisn": draw(st.integers(0, 2**32 - 1)),
        "order": draw(st.lists(st.booleans(), min_size=40, max_size=40)),
        "swap": draw(st.booleans()),
        "dup": draw(st.booleans()),
        "fin": draw(st.booleans()),
    }


def _interleave(a: list[Any], b: list[Any], order: list[bool]) -> list[Any]:
    out: list[Any] = []
    i = j = 0
    for take_a in order * 10:
        if i < len(a) and (take_a or j == len(b)):
            out.append(a[i])
            i += 1
        elif j < len(b):
            out.append(b[j])
            j += 1
    return out + a[i:] + b[j:]


@SETTINGS
@given(streams())
def test_equal_tcp_streams_match_however_cut(s: dict[str, Any]) -> None:
    data: bytes = s["data"]
    fin = s["fin"] and not (s["swap"] or s["dup"])

    def segments(side: str, isn: int, cuts: list[tuple[int, int]]) -> list[tuple[str, bytes]]:
        segs = [(f"{side}{k}", tcp(isn + 1 + a, data[a:b], "FPA" if fin and b == len(data)
                                   else "PA")) for k, (a, b) in enumerate(cuts)]
        if s["swap"] and len(segs) > 1:
            segs[0], segs[1] = segs[1], segs[0]  # out of order
        if s["dup"]:
            segs.append((f"{side}-dup", segs[0][1]))  # a retransmission
        return [(f"{side}-syn", tcp(isn, b"", "SA")), *segs]

    sisn = s["sisn"]
    if 0 < abs(sdiff(sisn, s["pisn"])) <= 2 * len(data) + 16:
        # ISNs closer than the data span: the secondary's first segment reads as either
        # numbering, and periodic data cannot tell (docs/compare.md, "The secondary's
        # numbering"); test_compare_numbering.py covers the numberings.
        sisn = s["pisn"]
    p = segments("p", s["pisn"], s["p_cuts"])
    q = segments("s", sisn, s["s_cuts"])
    h = Harness()
    for side, tag, frame in _interleave([("P", *x) for x in p], [("S", *x) for x in q],
                                        s["order"]):
        (h.p if side == "P" else h.s)(frame, tag)
    assert h.requests == []
    assert h.released == [tag for tag, _ in p]
    assert sorted(str(t) for t in h.dropped()) == sorted(tag for tag, _ in q)
    assert h.engine.stats.held_frames_now == 0
    assert h.engine.stats.bytes_compared == len(data)
    h.assert_consistent()


@SETTINGS
@given(st.binary(min_size=1, max_size=300), st.data())
def test_one_differing_byte_is_found(data: bytes, draw: st.DataObject) -> None:
    at = draw.draw(st.integers(0, len(data) - 1))
    bad = data[:at] + bytes([data[at] ^ draw.draw(st.integers(1, 255))]) + data[at + 1:]
    cut = draw.draw(st.integers(0, len(data)))
    h = Harness()
    h.p(tcp(100, data[:cut] if cut else data), "p1")
    if cut:
        h.p(tcp(100 + cut, data[cut:]), "p2")
    h.s(tcp(100, bad), "s1")
    (req,) = h.requests
    assert req.reason == Reason.PAYLOAD_MISMATCH
    assert req.divergence is not None and req.divergence.offset == at


@SETTINGS
@given(st.lists(st.binary(max_size=30), min_size=1, max_size=12), st.lists(st.booleans(),
                                                                              max_size=30))
def test_equal_datagram_sequences_keep_order(payloads: list[bytes], order: list[bool]) -> None:
    p = [(f"P{i}", udp(x)) for i, x in enumerate(payloads)]
    q = [(f"S{i}", udp(x)) for i, x in enumerate(payloads)]
    h = Harness()
    for side, tag, frame in _interleave([("P", *x) for x in p], [("S", *x) for x in q], order):
        (h.p if side == "P" else h.s)(frame, tag)
    assert h.requests == []
    assert h.released == [tag for tag, _ in p]
    assert all(isinstance(d, Release | CheckpointRequest) or d.reason == "matched"
               for d in h.log)
    h.assert_consistent()


@st.composite
def tcp_segments(draw: st.DrawFn) -> tuple[Side, bytes, str]:
    side = draw(st.sampled_from([Side.PRIMARY, Side.SECONDARY]))
    base = 1000 if side == Side.PRIMARY else draw(st.sampled_from([1000, 50_000, 2**32 - 30]))
    seq = base + draw(st.integers(-5, 60))
    flags = draw(st.sampled_from(["PA", "PA", "A", "SA", "S", "FA", "FPA", "R", "RA", "PAR"]))
    data = draw(st.sampled_from([b"", b"", b"abcdefgh", b"abcdefghijklmnop", b"xyz"]))
    ack = 7 + draw(st.integers(0, 20))
    sport = draw(st.sampled_from([80, 80, 81]))
    action = draw(st.sampled_from(["push"] * 8 + ["tick", "checkpoint"]))
    return side, tcp(seq, data, flags, ack, sport=sport), action


@SETTINGS
@given(st.lists(tcp_segments(), max_size=50), st.integers(1, 6))
def test_random_tcp_control_never_breaks_invariants(
        steps: list[tuple[Side, bytes, str]], queue: int) -> None:
    engine = Engine(Config(compare_timeout_ms=40, max_queue_per_conn=queue,
                           max_held_bytes=3000, max_connections=2))
    now = 0.0
    pushed: list[int] = []
    decided: list[object] = []
    for i, (side, frame, action) in enumerate(steps):
        now += 5
        if action == "tick":
            out = engine.tick(now)
        elif action == "checkpoint":
            out = engine.checkpoint_done(now)
        else:
            out = engine.push(side, frame, now, i)
            pushed.append(i)
        decided += [d.tag for d in out if not isinstance(d, CheckpointRequest)]
        assert_counters_consistent(engine)
    decided += [d.tag for d in engine.checkpoint_done(now + 1)]
    assert engine.stats.held_frames_now == 0
    assert sorted(decided) == pushed  # exactly one Release or Drop per frame
    assert_counters_consistent(engine)


@st.composite
def mixed_steps(draw: st.DrawFn) -> tuple[Side, bytes, str]:
    """TCP segments (as above) and UDP datagrams, some on a VLAN, IPv6 or fragmented."""
    if draw(st.integers(0, 3)):
        return draw(tcp_segments())
    side = draw(st.sampled_from([Side.PRIMARY, Side.SECONDARY]))
    data = draw(st.sampled_from([b"", b"a", b"abcdefghijkl", b"abcdefghijkm", b"x" * 90]))
    kind = draw(st.sampled_from(["plain", "plain", "plain", "vlan", "frag", "v6"]))
    ip_kw = {"flags": "MF"} if kind == "frag" else None
    frame = udp(data, sport=draw(st.sampled_from([53, 54])), vlan=7 if kind == "vlan" else None,
                v6=kind == "v6", ip_kw=ip_kw)
    return side, frame, draw(st.sampled_from(["push"] * 8 + ["tick", "checkpoint"]))


def _replay(steps: list[tuple[Side, bytes, str]], queue: int) -> tuple[list[object], object]:
    engine = Engine(Config(compare_timeout_ms=40, max_queue_per_conn=queue,
                           max_held_bytes=3000, max_connections=3))
    now = 0.0
    log: list[object] = []
    for i, (side, frame, action) in enumerate(steps):
        now += 5
        if action == "tick":
            log += engine.tick(now)
        elif action == "checkpoint":
            log += engine.checkpoint_done(now)
        else:
            log += engine.push(side, frame, now, i)
    log += engine.checkpoint_done(now + 1)
    return log, engine.stats.as_dict()


@SETTINGS
@given(st.lists(mixed_steps(), max_size=60), st.integers(1, 6))
def test_fast_path_decides_exactly_like_the_general_path(
        steps: list[tuple[Side, bytes, str]], queue: int) -> None:
    """push() takes a shortcut for known untagged IPv4 TCP/UDP connections; with it
    switched off every frame takes the general path.  Both must decide identically."""
    fast = _replay(steps, queue)
    saved = engine_module.FAST_MIN
    engine_module.FAST_MIN = 1 << 30  # no frame is long enough: general path only
    try:
        general = _replay(steps, queue)
    finally:
        engine_module.FAST_MIN = saved
    assert fast == general
