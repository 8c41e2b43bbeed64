"""Node loss while the primary's datapath holds PVM frames: nothing is held forever.

Destroy, owner SIGKILL, rmmod, ``ip link del`` of the tap or of the forward device: the
command returns (no hang waiting for a device reference), the kernel logs no splat, every
held PVM frame is released (owner-loss release, the default) or dropped (owner-loss drop),
comparison stops and node-gone says the VM is unprotected (its dp-flushed counts them).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from colo_env import PY, insmod, module_back, rmmod
from dp_topo import PVM_IP, PVM_PORT, Topo, recv_or_none, topology
from test_dp_udp import HOLD_MS, request_reply, wait_node

from colo_proxy.nl import (
    ColoClient,
    ColoEvents,
    ColoNetlinkError,
    GoneReason,
    Mode,
    NodeGoneEvent,
    OwnerLoss,
)

pytestmark = pytest.mark.kernel


@pytest.fixture
def topo(colo_ko: Path) -> Iterator[Topo]:
    insmod(colo_ko)
    with topology(bridged=False) as t:
        yield t


def gone(events: ColoEvents, index: int, timeout: float = 60) -> NodeGoneEvent:
    while True:
        event = events.next(timeout)
        assert event is not None, f"no node-gone for node {index}"
        if isinstance(event, NodeGoneEvent) and event.index == index:
            return event


def hold_one(topo: Topo, client: ColoClient, index: int, reply: bytes) -> socket.socket:
    server = topo.udp(topo.p, PVM_IP, PVM_PORT)
    csock = topo.udp(topo.c, topo.client_ip, 0)
    request_reply(topo, csock, server, b"q", reply)
    wait_node(client, index, "reply held", lambda n: n.dp_stats["held-packets"] == 1)
    server.close()
    return csock


def attach(client: ColoClient, topo: Topo, **kw: object) -> int:
    node = client.proxy_init(Mode.PRIMARY, tap_ifindex=topo.tap_ifindex(),
                             fwd_ifindex=topo.fwd_ifindex(), hold_timeout_ms=HOLD_MS,
                             **kw)  # type: ignore[arg-type]
    return node.index


def test_destroy_releases_held_frames(topo: Topo) -> None:
    with ColoClient(netns=topo.h) as client, ColoEvents(netns=topo.h) as events:
        index = attach(client, topo)
        csock = hold_one(topo, client, index, b"held then released")
        client.proxy_destroy(index)
        assert recv_or_none(csock, 30) == b"held then released"
        event = gone(events, index)
        assert event.reason == GoneReason.DESTROYED
        assert event.dp_stats["flushed"] == 1
        assert event.dp_stats["released"] == 1
        csock.close()


def test_destroy_with_owner_loss_drop_drops_held_frames(topo: Topo) -> None:
    with ColoClient(netns=topo.h) as client, ColoEvents(netns=topo.h) as events:
        index = attach(client, topo, owner_loss=OwnerLoss.DROP)
        csock = hold_one(topo, client, index, b"never seen")
        client.proxy_destroy(index)
        event = gone(events, index)
        assert event.dp_stats["flushed"] == 1
        assert event.dp_stats["released"] == 0
        assert recv_or_none(csock, 1.0) is None
        csock.close()


@pytest.mark.parametrize("dev", ["tap0", "fwd0"])
def test_link_del_while_held(topo: Topo, dev: str) -> None:
    """Deleting either device destroys the node (device-gone) without waiting for it."""
    with ColoClient(netns=topo.h) as client, ColoEvents(netns=topo.h) as events:
        index = attach(client, topo)
        csock = hold_one(topo, client, index, b"reply")
        res = subprocess.run(["ip", "-n", topo.h, "link", "del", dev], timeout=120,
                             capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stderr
        event = gone(events, index)
        assert event.reason == GoneReason.DEVICE_GONE
        assert event.dp_stats["flushed"] == 1
        with pytest.raises(ColoNetlinkError):
            client.get(index)
        if dev == "fwd0":  # the tap is still there: the released reply reaches the client
            assert recv_or_none(csock, 30) == b"reply"
        csock.close()


def test_rmmod_releases_held_frames(topo: Topo, colo_ko: Path) -> None:
    with module_back(colo_ko):
        client = ColoClient(netns=topo.h)
        try:
            index = attach(client, topo)
            csock = hold_one(topo, client, index, b"released by rmmod")
            res = rmmod()
            assert res.returncode == 0, res.stderr
            assert recv_or_none(csock, 30) == b"released by rmmod"
            csock.close()
        finally:
            client.close()


OWNER = """
import json, sys, time
from colo_proxy.nl import ColoClient, Mode
c = ColoClient()
n = c.proxy_init(Mode.PRIMARY, tap_ifindex=int(sys.argv[1]), fwd_ifindex=int(sys.argv[2]),
                 hold_timeout_ms=600000)
print(json.dumps({"index": n.index}), flush=True)
time.sleep(3600)
"""


def test_owner_sigkill_releases_held_frames(topo: Topo) -> None:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", topo.h, *PY, "-c", OWNER, str(topo.tap_ifindex()),
         str(topo.fwd_ifindex())], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        index = int(json.loads(proc.stdout.readline())["index"])
        with ColoClient(netns=topo.h) as client, ColoEvents(netns=topo.h) as events:
            csock = hold_one(topo, client, index, b"owner died")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            assert recv_or_none(csock, 30) == b"owner died"
            event = gone(events, index)
            assert event.reason == GoneReason.OWNER_RELEASED
            assert event.dp_stats["flushed"] == 1
            csock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()
