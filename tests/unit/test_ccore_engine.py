"""The C compare core (kmod/nfnetlink_colo/cmp*.c, through its userspace engine) decides
exactly like the Python engine (colo_proxy/compare/): the same releases, drops and
checkpoint requests, in the same order, and the same counters, for any sequence of
frames, ticks and checkpoints: FIFO traffic (every frame shape the parser knows) and TCP
streams (every secondary numbering, cuts, reordering, retransmissions, SYN/FIN/RST,
divergences, checkpoints, limits and the retired-connection table)."""

from __future__ import annotations

import ipaddress
import itertools
import random
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import ccore
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ccore_parse import SEEDS
from test_compare_parse import udp

from colo_proxy.compare import Config, Engine
from colo_proxy.compare import engine as engine_module
from colo_proxy.compare.model import PassthroughRule
from colo_proxy.compare.parse import TCP, parse

FIFO_SEEDS = [f for f in SEEDS if parse(f, 0)[0] != TCP] + [
    udp(b"a" * 30, sport=1000 + i, dport=53) for i in range(4)] + [
    udp(b"v6 flow", v6=True, sport=7), udp(b"tagged", vlan=9), b"", b"\x00" * 9]

ALL_SEEDS = FIFO_SEEDS + [f for f in SEEDS if parse(f, 0)[0] == TCP]
"""Also TCP of every shape the parser knows (IPv6, options, tags), mangled by ``frame``."""

SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

RULES = [
    PassthroughRule(proto=17, port=53),
    PassthroughRule(net=ipaddress.ip_network("10.0.0.0/30")),
    PassthroughRule(net=ipaddress.ip_network("fd00::/127")),
    PassthroughRule(proto=1),
    PassthroughRule(port=7),
]


@st.composite
def configs(draw: st.DrawFn) -> Config:
    return Config(compare_timeout_ms=draw(st.integers(1, 120)),
                  max_queue_per_conn=draw(st.integers(1, 6)),
                  max_held_bytes=draw(st.integers(60, 3000)),
                  max_connections=draw(st.integers(1, 6)),
                  passthrough=tuple(draw(st.lists(st.sampled_from(RULES), max_size=2))))


@st.composite
def frame(draw: st.DrawFn, pool: list[bytes]) -> tuple[bytes, int]:
    data = bytearray(draw(st.sampled_from(pool)))
    if data and draw(st.integers(0, 3)) == 0:
        # A divergence: mostly in the last bytes (the payload: same connection), else
        # anywhere (often another connection).
        lo = max(0, len(data) - 6) if draw(st.booleans()) else 0
        i = draw(st.integers(lo, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    vnet = draw(st.sampled_from([0, 0, 0, 12]))
    return bytes(vnet) + bytes(data), vnet


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Config, list[tuple[str, int, tuple[bytes, int], int]]]:
    pool = draw(st.lists(st.sampled_from(ALL_SEEDS), min_size=1, max_size=5))
    steps = draw(st.lists(st.tuples(
        st.sampled_from(["push"] * 6 + ["tick", "checkpoint"]),
        st.integers(0, 1), frame(pool), st.integers(0, 40)), max_size=60))
    return draw(configs()), steps


@contextmanager
def engines(config: Config, c_config: Config | None = None) -> Iterator[
        tuple[Engine, ccore.CEngine]]:
    c = ccore.CEngine(c_config or config)
    try:
        yield Engine(config), c
    finally:
        c.close()


def run(config: Config, steps: list[tuple[str, int, tuple[bytes, int], int]],
        c_config: Config | None = None, retired: int = 4096) -> None:
    with engines(config, c_config) as (py, c):
        c.set_retired_max(retired)
        now = 0
        for i, (action, side, (data, vnet), dt) in enumerate(steps):
            now += dt
            if action == "push":
                expected = ccore.normalise(py.push(side, data, now, i, vnet))  # type: ignore[arg-type]
                got = c.push(side, data, now, i, vnet)
            elif action == "tick":
                expected = ccore.normalise(py.tick(now))
                got = c.tick(now)
            else:
                expected = ccore.normalise(py.checkpoint_done(now))
                got = c.checkpoint_done(now)
            assert got == expected, f"step {i}: {action}"
            assert c.counters() == ccore.py_counters(py.stats), f"step {i}: counters"
            assert c.checkpoint_pending == py.checkpoint_pending
            assert c.retired_now == py.retired_now, f"step {i}: retired"


@SETTINGS
@given(scenarios())
def test_same_decisions_as_the_python_engine(
        case: tuple[Config, list[tuple[str, int, tuple[bytes, int], int]]]) -> None:
    run(*case)


def test_pairing_limits_and_checkpoint() -> None:
    """A fixed sequence that reaches every FIFO path: match either way round, a
    divergence, the queue limit, overflow, the timeout and checkpoint_done."""
    a, b = udp(b"one"), udp(b"two")
    steps = [("push", 0, (a, 0), 1), ("push", 1, (a, 0), 1),   # primary first
             ("push", 1, (b, 0), 1), ("push", 0, (b, 0), 1),   # secondary first
             ("push", 0, (a, 0), 1), ("push", 1, (b, 0), 1),   # divergence
             ("push", 1, (a, 0), 1), ("push", 0, (a, 0), 1),   # diverged connection
             ("checkpoint", 0, (b"", 0), 1),
             *[("push", 0, (a, 0), 1)] * 6,                   # queue limit, overflow
             ("tick", 0, (b"", 0), 500), ("checkpoint", 0, (b"", 0), 1),
             ("push", 0, (a, 0), 1), ("tick", 0, (b"", 0), 500)]  # timeout
    run(Config(compare_timeout_ms=100, max_queue_per_conn=2, max_held_bytes=10_000), steps)


def test_the_differential_can_fail() -> None:
    """Engines that decide differently (here: another timeout) fail the check."""
    steps = [("push", 0, (udp(b"x"), 0), 1), ("tick", 0, (b"", 0), 50)]
    run(Config(compare_timeout_ms=1000), steps)
    with pytest.raises(AssertionError, match="step 1: tick"):
        run(Config(compare_timeout_ms=10), steps, c_config=Config(compare_timeout_ms=1000))


# -- TCP ---------------------------------------------------------------------------------

MAC_C, MAC_G = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
GUEST, CLIENT = bytes([192, 168, 7, 2]), bytes([192, 168, 7, 9])
GUEST6, CLIENT6 = bytes.fromhex("fd00" + "00" * 13 + "02"), bytes.fromhex("fd00" + "00" * 13 + "09")
TCP_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}
M32 = 0xFFFFFFFF


def seg(seq: int, flags: str = "PA", data: bytes = b"", ack: int = 1, *, sport: int = 80,
        dport: int = 5555, rev: bool = False, vlan: int | None = None,
        v6: bool = False) -> bytes:
    """A TCP/IPv4 or IPv6 frame built by hand (scapy is too slow for thousands of
    examples); ``rev`` swaps addresses and ports (the connection's other direction)."""
    g, c = (GUEST6, CLIENT6) if v6 else (GUEST, CLIENT)
    src, dst = (c, g) if rev else (g, c)
    if rev:
        sport, dport = dport, sport
    bits = sum(TCP_FLAGS[c] for c in flags)
    tcph = struct.pack("!HHIIBBHHH", sport, dport, seq & M32, ack & M32, 5 << 4, bits,
                       65535, 0, 0)
    if v6:
        iph = struct.pack("!IHBB16s16s", 6 << 28, 20 + len(data), 6, 64, src, dst)
    else:
        iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(data), 0, 0, 64, 6, 0, src, dst)
    tag = b"" if vlan is None else struct.pack("!HH", 0x8100, vlan)
    ethertype = b"\x86\xdd" if v6 else b"\x08\x00"
    return MAC_C + MAC_G + tag + ethertype + iph + tcph + data


Step = tuple[str, int, tuple[bytes, int], int]


def _cut(rng: random.Random, n: int) -> list[tuple[int, int]]:
    points = sorted({rng.randrange(1, n) for _ in range(rng.randrange(0, 6))}) if n > 1 else []
    bounds = [0, *points, n]
    return list(itertools.pairwise(bounds))


def flow_frames(rng: random.Random, sport: int, rev: bool, vlan: int | None) -> list[
        tuple[int, bytes]]:
    """One direction of a connection as both sides send it, in arrival order: every
    secondary numbering (native, rewritten, translated), with or without the SYN, cut
    differently on each side, reordered, retransmitted, diverging or not, with FIN or
    RST, ISNs anywhere (also wrapping inside the data)."""
    n = rng.choice([0, 1, 5, 17, 40, 64, 120, 300])
    kind = rng.choice(["counter", "random", "periodic"])
    pattern = rng.choice([b"\0", b"ab", b"abc", b"wxyz"])
    if kind == "counter":
        data = b"".join((i + sport).to_bytes(2, "big") for i in range(n // 2 + 1))[:n]
    elif kind == "random":
        data = bytes(rng.randrange(256) for _ in range(n))
    else:  # agrees with itself under some shifts: the numbering choice by content
        data = (pattern * (n // len(pattern) + 1))[:n]
    pisn = rng.choice([rng.randrange(1 << 32), (1 << 32) - rng.randrange(1, n + 8)])
    numbering = rng.choice(["native", "rewritten", "translated"])
    sisn = pisn if numbering == "translated" else rng.choice(
        [rng.randrange(1 << 32), (pisn + rng.randrange(1, 3 * n + 40)) & M32,
         (pisn + rng.choice([-1, 1]) * len(pattern) * rng.randrange(1, 9)) & M32,
         (1 << 32) - rng.randrange(1, n + 8)])
    syn = rng.choice(["SA", "S", ""])
    start = 0 if syn else rng.choice([0, 0, rng.randrange(1, 1 << 20)])
    end_flag = rng.choice(["", "", "F", "R"])
    sdata = bytearray(data)
    s_end = end_flag
    syn_s = syn
    r = rng.random()
    if r < 0.15 and sdata:
        sdata[rng.randrange(len(sdata))] ^= 1 + rng.randrange(255)
    elif r < 0.2:
        sdata = sdata[:rng.randrange(len(sdata) + 1)] if sdata else bytearray(b"x")
    elif r < 0.25:
        s_end = rng.choice(["", "F", "R"])
    elif r < 0.28 and syn:
        syn_s = "S" if syn == "SA" else "SA"
    acks = [rng.randrange(3) for _ in range(4)]
    kw = {"sport": sport, "rev": rev, "vlan": vlan, "v6": rng.random() < 0.15}

    def side(isn: int, data_isn: int, stream: bytes, *, fin: str, synf: str,
             s: int) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        base = 70_000 if not rev else 3_000_000_000
        if synf:
            out.append((s, seg(isn, synf, b"", base + acks[0], **kw)))
        cuts = _cut(rng, len(stream))
        for i, (a, b) in enumerate(cuts):
            fl = "PA"
            if fin and i == len(cuts) - 1:
                fl = fin + "A"
            out.append((s, seg(data_isn + 1 + start + a, fl, bytes(stream[a:b]),
                               base + rng.choice(acks), **kw)))
        if fin and not cuts:
            out.append((s, seg(data_isn + 1 + start, fin + "A", b"", base + acks[1], **kw)))
        if rng.random() < 0.4:
            out.append((s, seg(data_isn + 1 + start + len(stream), "A", b"",
                               base + rng.choice(acks) + 1, **kw)))
        for _ in range(rng.randrange(3)):
            if out:  # retransmissions
                out.insert(rng.randrange(len(out) + 1), out[rng.randrange(len(out))])
        return out

    prim = side(pisn, pisn, data, fin=end_flag, synf=syn, s=0)
    s_data_isn = sisn if numbering == "native" else pisn
    sec = side(sisn, s_data_isn, bytes(sdata), fin=s_end, synf=syn_s, s=1)
    if rng.random() < 0.4 and len(sec) > 1:  # reordering
        if rng.random() < 0.5:
            i = rng.randrange(len(sec) - 1)
            sec[i], sec[i + 1] = sec[i + 1], sec[i]
        else:
            rng.shuffle(sec)
    merged: list[tuple[int, bytes]] = []
    while prim or sec:
        src = prim if (prim and (not sec or rng.random() < 0.5)) else sec
        merged.append(src.pop(0))
    return merged


@st.composite
def tcp_scenarios(draw: st.DrawFn) -> tuple[Config, list[Step]]:
    rng = draw(st.randoms(use_true_random=False))
    flows = [flow_frames(rng, rng.choice([80, 81]), rng.random() < 0.3,
                         rng.choice([None, None, 5])) for _ in range(rng.randrange(1, 4))]
    if rng.random() < 0.3:  # both directions of one connection (retirement waits)
        flows.append(flow_frames(rng, 80, False, None))
        flows.append(flow_frames(rng, 80, True, None))
    steps: list[Step] = []
    while any(flows):
        flow = rng.choice([f for f in flows if f])
        side, data = flow.pop(0)
        steps.append(("push", side, (data, 0), rng.randrange(4)))
        r = rng.random()
        if r < 0.06:
            steps.append(("checkpoint", 0, (b"", 0), rng.randrange(3)))
        elif r < 0.1:
            steps.append(("tick", 0, (b"", 0), rng.randrange(60)))
        elif r < 0.13:
            steps.append(("push", rng.randrange(2), (rng.choice(FIFO_SEEDS), 0), 1))
    steps.append(("tick", 0, (b"", 0), 100))
    steps.append(("checkpoint", 0, (b"", 0), 1))
    config = Config(compare_timeout_ms=draw(st.integers(5, 200)),
                    max_queue_per_conn=draw(st.sampled_from([2, 4, 16, 64])),
                    max_held_bytes=draw(st.sampled_from([300, 2000, 100_000])),
                    max_connections=draw(st.sampled_from([1, 2, 8])),
                    passthrough=tuple(draw(st.lists(st.sampled_from(
                        [*RULES, PassthroughRule(port=81)]), max_size=1))))
    return config, steps


@contextmanager
def retired_max(n: int) -> Iterator[None]:
    old = engine_module.RETIRED_MAX
    engine_module.RETIRED_MAX = n
    try:
        yield
    finally:
        engine_module.RETIRED_MAX = old


@SETTINGS
@given(tcp_scenarios(), st.sampled_from([4096, 1, 2]))
def test_tcp_same_decisions_as_the_python_engine(case: tuple[Config, list[Step]],
                                                  rmax: int) -> None:
    with retired_max(rmax):
        run(*case, retired=rmax)


def test_tcp_allocation_failure() -> None:
    """The defined outcome of a failed allocation for pending bytes: a memory-limit
    checkpoint request, the connection treated as diverged (the primary frame held, the
    secondary's dropped), everything released by checkpoint_done, then normal again."""
    c = ccore.CEngine(Config())
    try:
        c.fail_alloc(0)
        out = c.push(0, seg(1000, data=b"hello"), 1, 1)
        assert [d[0] for d in out] == ["request"] and out[0][1] == "memory-limit"
        assert out[0][4] is None
        assert c.push(1, seg(1000, data=b"hello"), 2, 2)[0][-1] == "diverged"
        assert c.checkpoint_done(3) == [("release", 1, out[0][2], 2.0)]
        assert c.counters()["held_frames_now"] == 0
        assert c.push(0, seg(1005, data=b"again"), 4, 3) == []
        got = c.push(1, seg(1005, data=b"again"), 5, 4)
        assert [d[0] for d in got] == ["drop", "release"]
    finally:
        c.close()
