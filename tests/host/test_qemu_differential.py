"""Differential tests: the same frame scenarios through QEMU's colo-compare and our Engine.

QEMU runs standalone (``-M none``, iothread, socket chardevs, notify_dev) exactly
as in docs/qemu.md; one fresh QEMU per scenario.  A scenario is a list of steps
(primary frame, secondary frame, wait, checkpoint); outcomes are split into
phases at each checkpoint: per phase, the primary frames released (in order) and
the number of checkpoint requests.  Where the two agree the outcomes must be
equal; where we deliberately differ (docs/qemu.md, "Differences") both sides'
behaviour is asserted.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

import pytest
from qemu_harness.colo_compare import ColoCompareRunner, ColoCompareSpec
from qemu_harness.driver import OutdevReader
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from colo_proxy.compare.engine import Engine
from colo_proxy.compare.model import CheckpointRequest, Config, Reason, Release, Side
from colo_proxy.qemu import notify as msg
from colo_proxy.qemu.framing import encode

pytestmark = pytest.mark.qemu

SERVER, CLIENT = "10.0.0.1", "10.0.0.2"
QUIET = 0.3
"""Seconds without output after which a QEMU phase is considered complete."""
GAP = 0.05
"""Seconds between a primary and a secondary step, so QEMU sees them in step order."""


def tcp(seq: int, payload: bytes, *, ack: int = 1000, sport: int = 80, ttl: int = 64,
        ip_id: int = 1, window: int = 502, options: list[tuple[str, object]] | None = None,
        flags: str = "PA", chksum: int | None = None) -> bytes:
    layer = TCP(sport=sport, dport=40000, seq=seq, ack=ack, flags=flags, window=window,
                options=options or [])
    if chksum is not None:
        layer.chksum = chksum
    return bytes(Ether(src="52:54:00:00:00:01", dst="52:54:00:00:00:02")
                 / IP(src=SERVER, dst=CLIENT, ttl=ttl, id=ip_id) / layer / payload)


def udp(payload: bytes, sport: int = 5353, ttl: int = 64, ip_id: int = 1) -> bytes:
    return bytes(Ether(src="52:54:00:00:00:01", dst="52:54:00:00:00:02")
                 / IP(src=SERVER, dst=CLIENT, ttl=ttl, id=ip_id)
                 / UDP(sport=sport, dport=5353) / payload)


# -- scenario model --------------------------------------------------------------

@dataclass
class Scenario:
    frames: dict[str, bytes]
    """Frame name -> bytes.  Names starting with 'P' are primaries, 'S' secondaries."""
    steps: list[str]
    """Frame names, ``wait:MS`` (let time pass), ``ckpt`` (the checkpoint is done)."""
    spec: ColoCompareSpec = field(default_factory=ColoCompareSpec)


@dataclass
class Phase:
    released: list[str]
    checkpoints: int


def _names(frames: dict[str, bytes]) -> dict[bytes, str]:
    return {data: name for name, data in frames.items() if name.startswith("P")}


def _queues(local: int, remote: int) -> tuple[int, int] | None:
    """(tx_queue, rx_queue) of the loopback TCP socket 127.0.0.1:local ->
    127.0.0.1:remote, from /proc/net/tcp."""
    want = (f"0100007F:{local:04X}", f"0100007F:{remote:04X}")
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if (fields[1], fields[2]) == want:
                tx, rx = fields[4].split(":")
                return int(tx, 16), int(rx, 16)
    return None


def _read_by_qemu(sock: socket.socket, timeout: float = 20.0) -> None:
    """Return once QEMU has read every byte sent on ``sock`` (nothing unacked on our
    side, nothing unread on its side).  colo-compare handles a frame in the read
    callback, so its outputs for it are written by then: the scenario's steps
    reach it in step order and a phase is complete, however loaded the machine."""
    ours, qemus = sock.getsockname()[1], sock.getpeername()[1]
    deadline = time.monotonic() + timeout
    while True:
        mine, theirs = _queues(ours, qemus), _queues(qemus, ours)
        if mine is not None and theirs is not None and mine[0] == 0 and theirs[1] == 0:
            return
        assert time.monotonic() < deadline, f"QEMU did not read its socket: {mine} {theirs}"
        time.sleep(0.005)


def run_qemu(sc: Scenario) -> list[Phase]:
    names = _names(sc.frames)
    phases: list[Phase] = []
    with ColoCompareRunner(sc.spec) as cc:
        assert cc.notify is not None
        out, ntf = OutdevReader(cc.outdev), OutdevReader(cc.notify)

        def close_phase() -> None:
            # QEMU has handled every frame sent; wait for a quiet period on outdev,
            # then collect whatever notify_dev got meanwhile.
            for sock in (cc.primary, cc.secondary):
                _read_by_qemu(sock)
            out.settle(QUIET)
            ntf.settle(0.01)
            released = [names.get(f.payload, "?") for f in out.take()]
            requests = [f.payload for f in ntf.take()]
            assert set(requests) <= {msg.DO_CHECKPOINT}, requests
            phases.append(Phase(released, len(requests)))

        last_side = ""
        for step in sc.steps:
            if step == "ckpt":
                close_phase()
                cc.notify.sendall(msg.encode_message(msg.COLO_CHECKPOINT))
            elif step.startswith("wait:"):
                time.sleep(int(step[5:]) / 1000)
            else:
                side = step[0]
                if last_side and side != last_side:
                    _read_by_qemu(cc.primary if last_side == "P" else cc.secondary)
                    time.sleep(GAP)
                last_side = side
                sock = cc.primary if side == "P" else cc.secondary
                sock.sendall(encode(sc.frames[step], None))
        close_phase()
    return phases


def run_engine(sc: Scenario, config: Config | None = None) -> tuple[list[Phase], list[object]]:
    """Our Engine; returns the phases and every decision (for detail checks)."""
    if config is None:
        config = Config(compare_timeout_ms=float(sc.spec.compare_timeout_ms or 3000))
    engine = Engine(config)
    scan = float(sc.spec.expired_scan_cycle_ms or 100)
    now = 0.0
    phases: list[Phase] = []
    current = Phase([], 0)
    decisions: list[object] = []

    def record(out: list[object]) -> None:
        decisions.extend(out)
        for d in out:
            if isinstance(d, Release):
                current.released.append(str(d.tag))
            elif isinstance(d, CheckpointRequest):
                current.checkpoints += 1

    for step in sc.steps:
        now += 1.0
        if step == "ckpt":
            phases.append(current)
            current = Phase([], 0)
            record(list(engine.checkpoint_done(now)))
        elif step.startswith("wait:"):
            end = now + int(step[5:])
            while now < end:
                now = min(now + scan, end)
                record(list(engine.tick(now)))
        else:
            side = Side.PRIMARY if step[0] == "P" else Side.SECONDARY
            record(list(engine.push(side, sc.frames[step], now, step)))
    phases.append(current)
    return phases, decisions


# -- scenarios where both agree --------------------------------------------------

def _tcp3() -> dict[str, bytes]:
    return {f"{side}{i}": tcp(1 + 100 * i, bytes([65 + i]) * 100)
            for side in "PS" for i in range(3)}


def test_identical_streams_released_in_order() -> None:
    sc = Scenario(_tcp3(), ["P0", "P1", "P2", "S0", "S1", "S2"])
    expected = [Phase(["P0", "P1", "P2"], 0)]
    assert run_qemu(sc) == expected
    assert run_engine(sc)[0] == expected


def test_one_byte_payload_mismatch_holds_and_requests_one_checkpoint() -> None:
    frames = {"P0": tcp(1, b"A" * 100), "S0": tcp(1, b"A" * 99 + b"B")}
    sc = Scenario(frames, ["P0", "S0", "ckpt"])
    expected = [Phase([], 1), Phase(["P0"], 0)]
    assert run_qemu(sc) == expected
    phases, decisions = run_engine(sc)
    assert phases == expected
    (req,) = [d for d in decisions if isinstance(d, CheckpointRequest)]
    assert req.reason is Reason.PAYLOAD_MISMATCH
    assert req.divergence is not None
    assert req.divergence.offset == 99


@pytest.mark.parametrize("p_sizes,s_sizes", [((1024,), (512, 512)), ((512, 512), (1024,)),
                                             ((300, 724), (700, 324))])
def test_different_segmentation_is_not_a_mismatch(p_sizes: tuple[int, ...],
                                                  s_sizes: tuple[int, ...]) -> None:
    data = bytes(i % 251 for i in range(1024))
    frames: dict[str, bytes] = {}
    for side, sizes in (("P", p_sizes), ("S", s_sizes)):
        off = 0
        for i, size in enumerate(sizes):
            frames[f"{side}{i}"] = tcp(1 + off, data[off:off + size])
            off += size
    steps = [f"P{i}" for i in range(len(p_sizes))] + [f"S{i}" for i in range(len(s_sizes))]
    sc = Scenario(frames, steps)
    expected = [Phase([f"P{i}" for i in range(len(p_sizes))], 0)]
    assert run_qemu(sc) == expected
    assert run_engine(sc)[0] == expected


def test_header_noise_is_ignored() -> None:
    payload = b"same bytes" * 10
    frames = {
        "P0": tcp(1, payload, ttl=64, ip_id=1, window=502,
                  options=[("NOP", None), ("NOP", None), ("Timestamp", (100, 200))]),
        "S0": tcp(1, payload, ttl=61, ip_id=4242, window=1000,
                  options=[("NOP", None), ("NOP", None), ("Timestamp", (999, 888))],
                  chksum=0xDEAD),
        "P1": udp(b"dns answer", ttl=64, ip_id=7),
        "S1": udp(b"dns answer", ttl=60, ip_id=8),
    }
    sc = Scenario(frames, ["P0", "P1", "S0", "S1"])
    expected = [Phase(["P0", "P1"], 0)]
    assert run_qemu(sc) == expected
    assert run_engine(sc)[0] == expected


def test_udp_lock_step_keeps_order() -> None:
    frames = {f"{s}{i}": udp(f"datagram {i}".encode()) for s in "PS" for i in range(3)}
    sc = Scenario(frames, ["P0", "S0", "P1", "S1", "P2", "S2"])
    expected = [Phase(["P0", "P1", "P2"], 0)]
    assert run_qemu(sc) == expected
    assert run_engine(sc)[0] == expected


# -- deliberate differences ------------------------------------------------------

def test_udp_burst_qemu_reverses_and_requests_spurious_checkpoints() -> None:
    frames = {f"{s}{i}": udp(f"datagram {i}".encode()) for s in "PS" for i in range(3)}
    sc = Scenario(frames, ["P0", "P1", "P2", "S0", "S1", "S2"])
    # QEMU compares newest primary first: P2 misses S0 and S1 (2 checkpoint
    # requests) before it matches, then P1, P0.
    assert run_qemu(sc) == [Phase(["P2", "P1", "P0"], 2)]
    # Ours: FIFO per flow, in order, no checkpoint.
    assert run_engine(sc)[0] == [Phase(["P0", "P1", "P2"], 0)]


def test_ack_ahead() -> None:
    data = bytes(range(256)) * 4
    frames = {"P0": tcp(1, data[:512], ack=1010), "P1": tcp(513, data[512:], ack=1010),
              "S0": tcp(1, data, ack=1000), "S1": tcp(1025, b"", ack=1010, flags="A")}
    sc = Scenario(frames, ["P0", "P1", "S0", "S1", "ckpt"])
    # QEMU: the bytes match, but the primary acks more than the secondary has
    # acked so far -> immediate mismatch and a checkpoint request; the secondary's
    # pure ACK then raises its ack and the primaries go out (the checkpoint was
    # spurious).
    assert run_qemu(sc) == [Phase(["P0", "P1"], 1), Phase([], 0)]
    # Ours: matching bytes with the primary's ack ahead wait for the secondary's
    # ack to catch up, then are released without a checkpoint.
    assert run_engine(sc)[0] == [Phase(["P0", "P1"], 0), Phase([], 0)]


def test_lone_primary_timeout() -> None:
    spec = ColoCompareSpec(compare_timeout_ms=500, expired_scan_cycle_ms=100)
    sc = Scenario({"P0": tcp(1, b"lonely" * 10)}, ["P0", "wait:1200", "ckpt"], spec)
    qemu = run_qemu(sc)
    # QEMU repeats DO_CHECKPOINT every scan cycle while the packet is stale.
    assert qemu[0].released == []
    assert qemu[0].checkpoints >= 3
    assert qemu[1] == Phase(["P0"], 0)
    # Ours: exactly one timeout request until the checkpoint is done.
    phases, decisions = run_engine(sc)
    assert phases == [Phase([], 1), Phase(["P0"], 0)]
    (req,) = [d for d in decisions if isinstance(d, CheckpointRequest)]
    assert req.reason is Reason.TIMEOUT


@pytest.mark.parametrize("kind", ["ipv6", "vlan"])
def test_ipv6_and_vlan_are_compared_not_passed(kind: str) -> None:
    def frame(payload: bytes) -> bytes:
        eth = Ether(src="52:54:00:00:00:01", dst="52:54:00:00:00:02")
        if kind == "ipv6":
            return bytes(eth / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=53, dport=53)
                         / payload)
        return bytes(eth / Dot1Q(vlan=7) / IP(src=SERVER, dst=CLIENT) / UDP(sport=53, dport=53)
                     / payload)

    frames = {"P0": frame(b"primary says"), "S0": frame(b"secondary says")}
    sc = Scenario(frames, ["P0", "S0", "ckpt"])
    # QEMU: unsupported frames from the primary go out at once, uncompared; the
    # secondary's are dropped: the divergence goes unnoticed.
    assert run_qemu(sc) == [Phase(["P0"], 0), Phase([], 0)]
    # Ours: compared like any other datagram flow; the mismatch holds P0.
    assert run_engine(sc)[0] == [Phase([], 1), Phase(["P0"], 0)]


def test_queue_overflow() -> None:
    count = 1100
    frames = {f"P{i}": tcp(1 + 10 * i, b"%09d\n" % i) for i in range(count)}
    steps = [*frames, "ckpt"]
    sc = Scenario(frames, steps, ColoCompareSpec(compare_timeout_ms=600000))
    qemu = run_qemu(sc)
    # QEMU keeps max_queue_size + 1 = 1025 frames and destroys the rest silently.
    assert qemu[0] == Phase([], 0)
    assert len(qemu[1].released) == 1025
    assert qemu[1].released == [f"P{i}" for i in range(1025)]
    # Ours: crossing the soft limit (1024) requests a checkpoint; nothing is lost
    # below the hard limit (2048).
    phases, decisions = run_engine(sc, Config(compare_timeout_ms=600000))
    assert phases[0] == Phase([], 1)
    assert phases[1].released == [f"P{i}" for i in range(count)]
    (req,) = [d for d in decisions if isinstance(d, CheckpointRequest)]
    assert req.reason is Reason.QUEUE_LIMIT
