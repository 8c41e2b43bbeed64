"""The agents' heartbeat over real UDP sockets on loopback: authenticated, replay-proof.

A third socket plays the attacker: it sends forged datagrams (wrong key),
replays captured ones, and reflects a host's own heartbeat back to it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from qemu_harness.process import free_udp_port

from colo_proxy.agent.config import HostPort
from colo_proxy.agent.heartbeat import Heartbeat, encode

KEY = b"k" * 32
WRONG = b"w" * 32
LO = "127.0.0.1"


def _pair(interval_ms: int = 50, misses: int = 4) -> tuple[Heartbeat, Heartbeat, Any]:
    p_port, s_port = free_udp_port(), free_udp_port()
    state = {"primary_healthy": True}
    primary = Heartbeat("vm", primary=True, key=KEY, listen=HostPort(LO, p_port),
                        peer=HostPort(LO, s_port), interval_ms=interval_ms, misses=misses,
                        healthy=lambda: state["primary_healthy"])
    secondary = Heartbeat("vm", primary=False, key=KEY, listen=HostPort(LO, s_port),
                          peer=HostPort(LO, p_port), interval_ms=interval_ms, misses=misses)
    return primary, secondary, state


async def _until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def _run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


class Attacker:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LO, 0))

    def send(self, data: bytes, hb: Heartbeat) -> None:
        self.sock.sendto(data, (hb.listen.host, hb.listen.port))


def test_valid_heartbeats_keep_both_alive() -> None:
    async def body() -> None:
        primary, secondary, _ = _pair()
        await primary.start()
        await secondary.start()
        await _until(lambda: primary.counters.accepted >= 10 and secondary.counters.accepted >= 10)
        assert not primary.silent and not secondary.silent
        assert secondary.peer_healthy is True
        await primary.close()
        await _until(lambda: secondary.silent)         # the primary stopped: silence
        await secondary.close()
        c = secondary.counters
        assert (c.forged, c.replayed, c.malformed, c.wrong_peer, c.stale) == (0, 0, 0, 0, 0)

    _run(body)


def test_forged_heartbeats_do_not_keep_a_dead_peer_alive() -> None:
    async def body() -> None:
        primary, secondary, _ = _pair()
        await primary.start()
        await secondary.start()
        await _until(lambda: secondary.counters.accepted >= 3)
        await primary.close()                           # the primary dies
        attacker = Attacker()
        deadline = time.monotonic() + 20
        counter = 10**6
        while not secondary.silent and time.monotonic() < deadline:
            counter += 1                                # fresh, well-formed, wrong key
            attacker.send(encode(WRONG, "vm", primary=True, healthy=True,
                                 session=primary.session, counter=counter,
                                 wall_ms=int(time.time() * 1000)), secondary)
            attacker.send(b"garbage", secondary)
            await asyncio.sleep(0.01)
        assert secondary.silent
        assert secondary.counters.forged > 0 and secondary.counters.malformed > 0
        await secondary.close()

    _run(body)


def test_replayed_heartbeats_are_refused_and_counted() -> None:
    async def body() -> None:
        primary, secondary, _ = _pair(interval_ms=10_000)  # we send by hand
        await secondary.start()
        captured = [primary.next_datagram() for _ in range(5)]
        attacker = Attacker()
        for data in captured:
            attacker.send(data, secondary)
        await _until(lambda: secondary.counters.accepted == 5)
        for data in captured:                           # the same five again
            attacker.send(data, secondary)
        attacker.send(captured[0], secondary)
        await _until(lambda: secondary.counters.replayed == 6)
        assert secondary.counters.accepted == 5
        # A datagram from long ago (outside the time window) with a new session.
        old = encode(KEY, "vm", primary=True, healthy=True, session=b"\1" * 8, counter=1,
                     wall_ms=int(time.time() * 1000) - 3_600_000)
        attacker.send(old, secondary)
        await _until(lambda: secondary.counters.stale == 1)
        await secondary.close()

    _run(body)


def test_reflected_heartbeat_is_refused() -> None:
    async def body() -> None:
        _, secondary, _ = _pair(interval_ms=10_000)
        await secondary.start()
        attacker = Attacker()
        attacker.send(secondary.next_datagram(), secondary)   # its own, sent back
        other_vm = encode(KEY, "other", primary=True, healthy=True, session=b"\2" * 8,
                          counter=1, wall_ms=int(time.time() * 1000))
        attacker.send(other_vm, secondary)
        await _until(lambda: secondary.counters.wrong_peer == 2)
        assert secondary.counters.accepted == 0
        await secondary.close()

    _run(body)


def test_forged_unhealthy_cannot_trigger_failover_but_a_real_one_does() -> None:
    async def body() -> None:
        primary, secondary, state = _pair()
        await primary.start()
        await secondary.start()
        await _until(lambda: secondary.counters.accepted >= 3)
        attacker = Attacker()
        for i in range(20):
            attacker.send(encode(WRONG, "vm", primary=True, healthy=False,
                                 session=primary.session, counter=10**6 + i,
                                 wall_ms=int(time.time() * 1000)), secondary)
        await _until(lambda: secondary.counters.forged == 20)
        assert secondary.peer_healthy is True
        state["primary_healthy"] = False                # the primary's QEMU is gone
        await _until(lambda: secondary.peer_healthy is False)
        await primary.close()
        await secondary.close()

    _run(body)


def test_restarted_peer_is_accepted_with_a_new_session() -> None:
    async def body() -> None:
        primary, secondary, _ = _pair()
        await primary.start()
        await secondary.start()
        await _until(lambda: secondary.counters.accepted >= 3)
        await primary.close()
        restarted = Heartbeat("vm", primary=True, key=KEY, listen=primary.listen,
                              peer=primary.peer, interval_ms=50, misses=4)
        await restarted.start()                         # the agent was killed and restarted
        before = secondary.counters.accepted
        await _until(lambda: secondary.counters.accepted >= before + 3)
        assert secondary.counters.replayed == 0
        await restarted.close()
        await secondary.close()

    _run(body)


def test_a_restarted_receiver_refuses_beats_captured_before_it_started() -> None:
    """The time window is max(5 s, 2 x interval x misses), longer than the dead-after:
    a receiver that just restarted knows no peer session, so without the start rule it
    took a beat captured up to 5 s before for a live peer."""
    async def body() -> None:
        primary, secondary, _ = _pair()                 # dead after 0.2 s
        await secondary.start()
        attacker = Attacker()                           # relays, and keeps a copy
        captured = [primary.next_datagram() for _ in range(50)]
        for data in captured[:3]:
            attacker.send(data, secondary)
        await _until(lambda: secondary.counters.accepted == 3)
        await secondary.close()                         # the secondary's agent restarts
        await asyncio.sleep(0.01)                       # (and the primary is dead)
        restarted = Heartbeat("vm", primary=False, key=KEY, listen=secondary.listen,
                              peer=secondary.peer, interval_ms=50, misses=4)
        await restarted.start()
        for data in captured[3:]:                       # genuine, in order, within 5 s
            attacker.send(data, restarted)
            await asyncio.sleep(0.01)
        c = restarted.counters
        await _until(lambda: c.stale + c.accepted + c.replayed == len(captured) - 3)
        assert (c.accepted, c.stale) == (0, len(captured) - 3)
        assert restarted.silent                         # 0.47 s since start: dead
        fresh = primary.next_datagram()                 # the peer is back: accepted
        attacker.send(fresh, restarted)
        await _until(lambda: restarted.counters.accepted == 1)
        assert not restarted.silent
        await restarted.close()

    _run(body)
