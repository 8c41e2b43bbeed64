"""The C compare core (kmod/nfnetlink_colo/cmp*.c, through its userspace engine) decides
exactly like the Python engine (colo_proxy/compare/): the same releases, drops and
checkpoint requests, in the same order, and the same counters, for any sequence of
frames, ticks and checkpoints.  TCP streams are not in the C core yet: frames that
parse as TCP are left out of the sequences."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager

import ccore
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ccore_parse import SEEDS
from test_compare_parse import udp

from colo_proxy.compare import Config, Engine
from colo_proxy.compare.model import PassthroughRule
from colo_proxy.compare.parse import TCP, parse

FIFO_SEEDS = [f for f in SEEDS if parse(f, 0)[0] != TCP] + [
    udp(b"a" * 30, sport=1000 + i, dport=53) for i in range(4)] + [
    udp(b"v6 flow", v6=True, sport=7), udp(b"tagged", vlan=9), b"", b"\x00" * 9]

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
    raw = bytes(vnet) + bytes(data)
    if parse(raw, vnet)[0] == TCP:
        return b"", 0
    return raw, vnet


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Config, list[tuple[str, int, tuple[bytes, int], int]]]:
    pool = draw(st.lists(st.sampled_from(FIFO_SEEDS), min_size=1, max_size=5))
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
        c_config: Config | None = None) -> None:
    with engines(config, c_config) as (py, c):
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
