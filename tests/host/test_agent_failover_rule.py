"""The split-brain rule (colo_proxy/agent/failover.py) with a real witness socket."""

from __future__ import annotations

import asyncio
import socket

from qemu_harness.process import free_tcp_port

from colo_proxy.agent.config import HostPort
from colo_proxy.agent.failover import peer_is_dead


def _decide(**kw: object) -> tuple[bool, str]:
    return asyncio.run(peer_is_dead(timeout_s=2.0, **kw))  # type: ignore[arg-type]


def test_silent_peer_with_a_live_witness_is_not_dead() -> None:
    with socket.socket() as witness:
        witness.bind(("127.0.0.1", 0))
        witness.listen(4)
        address = HostPort("127.0.0.1", witness.getsockname()[1])
        dead, why = _decide(said_unhealthy=False, silent=True, witness=address)
        assert not dead and "split-brain guard" in why
        # The peer itself saying its QEMU is gone overrides the witness.
        assert _decide(said_unhealthy=True, silent=False, witness=address)[0]


def test_silent_peer_with_an_unreachable_witness_is_dead() -> None:
    address = HostPort("127.0.0.1", free_tcp_port())      # nothing listens there
    dead, why = _decide(said_unhealthy=False, silent=True, witness=address)
    assert dead and "unreachable" in why


def test_without_witness_silence_is_enough_and_heartbeats_keep_alive() -> None:
    assert _decide(said_unhealthy=False, silent=True, witness=None)[0]
    assert not _decide(said_unhealthy=False, silent=False, witness=None)[0]
