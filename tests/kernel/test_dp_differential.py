"""The kernel datapath against the Python engine, in the guest: the same scripted frames
give the same releases, the same SVM drops and the same checkpoint requests.

The sequences are those of the host differential (tests/unit/test_ccore_engine.py
``flow_frames``): TCP connections as both sides send them, cut differently, reordered,
retransmitted, with every secondary numbering and ISN, diverging or not, with SYN, FIN
and RST, and checkpoints in between.  Each frame is injected with a raw socket, the
PVM's on ``eth0`` of ``p`` (it reaches the tap), the SVM's on ``eth0`` of ``s`` (it
reaches the forward link), one at a time: the next is sent once the node counted the
previous one, so the kernel sees exactly the engine's order.  The engine gets the
kernel's limits and a hold timeout no step reaches.  What the kernel released is read
on the client's link (bridged: every released frame is flooded there, none is for the
client's stack).  Its checkpoint requests are read from the events group and compared
with the engine's, one checkpoint period at a time (between two DO_CHECKPOINTs a node
asks at most once; a resend repeats that request): reason, connection and the offset
of the first difference.
"""

from __future__ import annotations

import random
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from colo_env import insmod
from dp_topo import Topo, in_netns, topology
from test_dp_udp import wait_node

from colo_proxy.compare import Config, Engine
from colo_proxy.compare.model import CheckpointRequest, ConnKey, Drop, DropReason, Release
from colo_proxy.datapath.kernel import conn_key
from colo_proxy.nl import CheckpointNeededEvent, ColoClient, ColoEvents, Mode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_ccore_engine import MAC_C, MAC_G, flow_frames

pytestmark = pytest.mark.kernel

HOLD_MS = 600_000
# The kernel's defaults (colo_dp.h), so that the engine's limits are the kernel's.
CONFIG = Config(compare_timeout_ms=HOLD_MS, max_queue_per_conn=256,
                max_held_bytes=16 << 20, max_connections=4096)
SEEDS = list(range(6))

Step = tuple[str, int, bytes]
# A checkpoint request as both sides can state it: reason, connection, first difference.
Request = tuple[str, ConnKey | None, int | None]


@pytest.fixture
def topo(colo_ko: Path) -> Iterator[Topo]:
    insmod(colo_ko)
    with topology(bridged=True) as t:
        yield t


def scenario(seed: int) -> list[Step]:
    """Flows of both directions interleaved, some tagged (VLAN 5), with checkpoints, as
    the host test does (no ticks: no timeout is reached)."""
    rng = random.Random(seed)
    flows = [flow_frames(rng, 80 + i, rng.random() < 0.3, rng.choice([None, None, 5]))
             for i in range(rng.randrange(1, 4))]
    if rng.random() < 0.4:
        flows.append(flow_frames(rng, 90, False, None))
        flows.append(flow_frames(rng, 90, True, None))
    steps: list[Step] = []
    while any(flows):
        flow = rng.choice([f for f in flows if f])
        side, data = flow.pop(0)
        steps.append(("push", side, data))
        if rng.random() < 0.06:
            steps.append(("checkpoint", 0, b""))
    steps.append(("checkpoint", 0, b""))
    return steps


def engine_run(steps: list[Step]) -> tuple[list[bytes], int, list[list[Request]]]:
    """The engine's released frames in order, its SVM matched drops, its requests per
    checkpoint period (the first period ends at the first checkpoint step)."""
    engine = Engine(CONFIG)
    released: list[bytes] = []
    matched = 0
    requests: list[list[Request]] = [[]]
    frames: dict[int, bytes] = {}
    now = 0.0
    for i, (action, side, data) in enumerate(steps):
        now += 1
        if action == "push":
            frames[i] = data
            out = engine.push(side, data, now, i)  # type: ignore[arg-type]
        else:
            out = engine.checkpoint_done(now)
            requests.append([])
        for d in out:
            if isinstance(d, Release):
                released.append(frames[int(d.tag)])  # type: ignore[call-overload]
            elif isinstance(d, Drop):
                if d.side == 1 and d.reason == DropReason.MATCHED:
                    matched += 1
            elif isinstance(d, CheckpointRequest):
                div = d.divergence
                requests[-1].append((str(d.reason), d.key, None if div is None else div.offset))
    return released, matched, requests


def n_requests(requests: list[list[Request]]) -> int:
    return sum(len(period) for period in requests)


def period_requests(events: ColoEvents, index: int) -> list[Request]:
    """The requests of one checkpoint period, resends folded.  The caller has waited
    until the node counted the period's last frame; the node counts a frame before it
    compares it, so the request that frame raised may still be on its way: events are
    read until none comes for 50 ms."""
    got: list[Request] = []
    while (event := events.next(0.05)) is not None:
        if isinstance(event, CheckpointNeededEvent) and event.index == index:
            req = (str(event.reason), conn_key(event.tuple), event.offset)
            if req not in got:
                got.append(req)
    return got


def raw(ns: str, dev: str, proto: int = 0) -> socket.socket:
    with in_netns(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
    sock.bind((dev, proto))
    return sock


SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40


def recv_frame(sock: socket.socket) -> bytes:
    """One frame as sent: a tag the stack took out (auxdata) goes back in."""
    data, cmsgs, _, _ = sock.recvmsg(65600, socket.CMSG_SPACE(20))
    for level, kind, aux in cmsgs:
        if level == SOL_PACKET and kind == PACKET_AUXDATA:
            status, _, _, _, _, tci, tpid = struct.unpack("IIIHHHH", aux[:20])
            if status & TP_STATUS_VLAN_VALID:
                tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
    return data


def kernel_run(topo: Topo, steps: list[Step],
               expect: int) -> tuple[list[bytes], int, list[list[Request]]]:
    """What the kernel released, its SVM matched count, its checkpoint requests per
    checkpoint period (events), checked against its checkpoint-requests counter.
    ``expect`` (the engine's number of releases) only bounds the wait for the release
    tasklet; every frame that arrives within a second more is returned too."""
    cap = raw(topo.c, "eth0", 3)
    cap.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    pvm, svm = raw(topo.p, "eth0"), raw(topo.s, "eth0")
    try:
        with ColoClient(netns=topo.h) as client, ColoEvents(netns=topo.h) as events:
            requests: list[list[Request]] = []
            index = client.proxy_init(Mode.PRIMARY, tap_ifindex=topo.tap_ifindex(),
                                      fwd_ifindex=topo.fwd_ifindex(),
                                      hold_timeout_ms=HOLD_MS).index
            seen = [0, 0]
            for action, side, data in steps:
                if action == "checkpoint":
                    requests.append(period_requests(events, index))
                    client.do_checkpoint(index)
                    continue
                (svm if side else pvm).send(data)
                seen[side] += 1
                field = "svm-frames" if side else "captured"
                want = seen[side]
                wait_node(client, index, f"frame {want} of side {side}",
                          lambda n, f=field, w=want: n.dp_stats[f] >= w)  # type: ignore[misc]
            requests.append(period_requests(events, index))
            deadline = time.monotonic() + 60
            got = client.get(index)
            while got.dp_stats["released"] < expect and time.monotonic() < deadline:
                time.sleep(0.2)
                got = client.get(index)
            frames: list[bytes] = []
            cap.settimeout(1.0)
            while True:
                try:
                    f = recv_frame(cap)
                except TimeoutError:
                    break
                if f[:12] == MAC_C + MAC_G:
                    frames.append(f)
            assert len(frames) == got.dp_stats["released"]
            assert got.dp_stats["captured"] == seen[0]
            assert got.dp_stats["held-packets"] == 0
            assert n_requests(requests) == got.stats["checkpoint-requests"], requests
            client.proxy_destroy(index)
            return frames, got.dp_stats["matched"], requests
    finally:
        for s in (cap, pvm, svm):
            s.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_kernel_decides_like_the_engine(topo: Topo, seed: int) -> None:
    steps = scenario(seed)
    released, matched, requests = engine_run(steps)
    k_released, k_matched, k_requests = kernel_run(topo, steps, len(released))
    assert len(k_released) == len(released)
    for i, (k, e) in enumerate(zip(k_released, released, strict=True)):
        assert k == e, f"release {i}: kernel {k.hex()} engine {e.hex()}"
    assert k_matched == matched
    assert k_requests == requests


def spoil(steps: list[Step]) -> list[Step]:
    """The SVM's frames with their last byte changed."""
    return [(a, s, d[:-1] + bytes([d[-1] ^ 0xFF]) if s == 1 and d else d) for a, s, d in steps]


def test_the_differential_can_fail(topo: Topo) -> None:
    """SVM bytes changed: the kernel's decisions are no longer the engine's on the
    unchanged sequence, so the comparison above would see a difference."""
    for seed in range(100, 200):
        flow = flow_frames(random.Random(seed), 80, False, None)
        steps: list[Step] = [("push", s, d) for s, d in flow] + [("checkpoint", 0, b"")]
        released, matched, requests = engine_run(steps)
        if not n_requests(requests) and n_requests(engine_run(spoil(steps))[2]):
            break
    else:
        pytest.fail("no clean flow that a changed byte spoils")
    _, k_matched, k_requests = kernel_run(topo, spoil(steps), len(released))
    assert (k_matched, k_requests) != (matched, requests)
    assert n_requests(k_requests) >= 1
