"""The agent's checkpoint policy plugged into a real seam (colo_proxy/agent/policy.py).

A real Engine, the real EpochGate and the real CheckpointController; QEMU's side
(STOP, RESUME, COLO_EXIT) is handed to the controller as the monitor would, and
COLO is marked as entered as the controller's status check would.  No monitor
is connected: no request is ever sent (tests/host/test_agent_colo_pair.py runs
the same wiring against a real KVM COLO pair).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from colo_proxy.agent.policy import QmpCheckpointPolicy
from colo_proxy.agent.qmp import Monitor
from colo_proxy.compare import Engine
from colo_proxy.compare.model import Config, Side
from colo_proxy.seam import EventWriter, Seam

P, S = Side.PRIMARY, Side.SECONDARY


def udp(payload: bytes, sport: int = 5000) -> bytes:
    return bytes(Ether(src="52:54:00:00:00:01", dst="52:54:00:00:00:02")
                 / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=sport, dport=53) / payload)


class Recorder:
    def __init__(self) -> None:
        self.released: list[object] = []
        self.dropped: list[object] = []

    def release(self, tags: list[object]) -> int:
        self.released.extend(tags)
        return 0

    def drop(self, tags: list[object]) -> None:
        self.dropped.extend(tags)


class Rig:
    def __init__(self, tmp_path: Path | None = None, epoch: bool = True) -> None:
        self.now = 0.0
        self.policy = QmpCheckpointPolicy(Monitor("/nonexistent/qmp"), epoch=epoch)
        self.io = Recorder()
        self.events = tmp_path / "ev.jsonl" if tmp_path else None
        self.seam = Seam(Engine(Config(compare_timeout_ms=60000)), self.policy, self.io,
                         events=EventWriter(str(self.events) if self.events else None),
                         clock_ms=lambda: self.now)
        self.ctl = self.policy.controller

    def push(self, side: Side, frame: bytes, tag: object) -> None:
        self.now += 1.0
        self.seam.handle(self.seam.input.push(side, frame, self.now, tag))

    def enter_colo(self) -> None:
        """What the controller does when query-colo-status says primary."""
        self.ctl.in_colo = True
        self.ctl.hooks.enter_colo()

    def qemu(self, event: str, **data: object) -> None:
        self.ctl.on_event(event, data, self.now)

    def event_names(self) -> list[str]:
        assert self.events is not None
        return [json.loads(line)["event"] for line in self.events.read_text().splitlines()]


def test_bind_installs_the_gate_and_solo_passes_primaries_until_colo() -> None:
    r = Rig()
    gate = r.policy.gate
    assert gate is not None and r.seam.input is gate and r.ctl.hooks is r.seam.control
    r.push(P, udp(b"before colo"), "P0")
    r.push(S, udp(b"before colo"), None)
    assert r.io.released == ["P0"]                  # nothing to compare with: passed
    assert r.seam.counters.checkpoint_requests == {}


def test_stop_fences_resume_flushes_through_the_seam(tmp_path: Path) -> None:
    async def scenario() -> Rig:
        r = Rig(tmp_path)
        r.enter_colo()
        r.push(P, udp(b"old-p"), "P-old")
        r.push(S, udp(b"old-s"), None)              # mismatch: a request
        assert r.ctl.counters.by_reason == {"payload-mismatch": 1}
        assert r.seam.requesting and r.io.released == []
        r.qemu("STOP")
        r.push(S, udp(b"new", sport=7), None)       # the SVM already runs again
        assert r.seam.held() == (1, 1)              # P-old in the engine, S-new parked
        r.qemu("RESUME")
        assert r.io.released == ["P-old"]
        r.push(P, udp(b"new", sport=7), "P-new")    # kept S-new matches it
        assert r.io.released == ["P-old", "P-new"]
        await r.ctl.close()
        return r

    r = asyncio.run(scenario())
    c = r.seam.counters
    assert (c.checkpoints_done, c.released_frames, c.dropped_secondary) == (
        1, 2, {"diverged": 1, "matched": 1})        # S-new was not flushed
    assert not r.seam.requesting                    # no overdue report follows
    assert r.ctl.counters.checkpoints_done == 1
    assert r.event_names() == ["checkpoint-request", "checkpoint-done"]


def test_colo_exit_releases_held_and_parked_as_one_flush(tmp_path: Path) -> None:
    async def scenario() -> Rig:
        r = Rig(tmp_path)
        r.enter_colo()
        r.push(P, udp(b"held"), "P-held")
        r.qemu("STOP")
        r.push(P, udp(b"parked", sport=8), "P-parked")
        r.qemu("COLO_EXIT", mode="primary", reason="error")
        assert r.io.released == ["P-held", "P-parked"]
        r.push(P, udp(b"after"), "P-after")         # solo from now on
        await r.ctl.close()
        return r

    r = asyncio.run(scenario())
    assert r.io.released == ["P-held", "P-parked", "P-after"]
    assert r.seam.counters.checkpoints_done == 1
    assert r.seam.held() == (0, 0)


def test_exit_settles_parked_frames_by_the_rule() -> None:
    async def scenario(rule: str) -> Rig:
        r = Rig()
        r.enter_colo()
        r.push(P, udp(b"held"), "P-held")
        r.qemu("STOP")
        r.push(P, udp(b"parked", sport=8), "P-parked")
        r.push(S, udp(b"parked s", sport=9), None)
        assert r.seam.settle(rule) == (2, 1)
        r.qemu("RESUME")                            # after the exit: ignored
        await r.ctl.close()
        return r

    flushed = asyncio.run(scenario("flush"))
    assert flushed.io.released == ["P-held", "P-parked"] and flushed.io.dropped == []
    assert flushed.seam.counters.exit_released == 2
    dropped = asyncio.run(scenario("drop"))
    assert dropped.io.released == [] and dropped.io.dropped == ["P-held", "P-parked"]
    assert dropped.seam.counters.checkpoints_done == 0


def test_without_the_gate_resume_flushes_everything_read_before_it() -> None:
    async def scenario() -> Rig:
        r = Rig(epoch=False)
        assert r.policy.gate is None and r.seam.input is r.seam.engine
        r.enter_colo()
        r.push(P, udp(b"old-p"), "P-old")
        r.push(S, udp(b"old-s"), None)
        r.qemu("STOP")                              # no fence without the gate
        r.push(S, udp(b"new", sport=7), None)
        r.qemu("RESUME")
        r.push(P, udp(b"new", sport=7), "P-new")
        await r.ctl.close()
        return r

    r = asyncio.run(scenario())
    assert r.io.released == ["P-old"]               # the race: S-new was flushed
    assert r.seam.counters.dropped_secondary == {"diverged": 1, "checkpoint": 1}


def test_a_divergence_among_parked_frames_is_a_new_request_after_the_flush(
        tmp_path: Path) -> None:
    async def scenario() -> Rig:
        r = Rig(tmp_path)
        r.enter_colo()
        r.push(P, udp(b"old-p"), "P-old")
        r.push(S, udp(b"old-s"), None)
        r.qemu("STOP")
        r.push(P, udp(b"new-p", sport=7), "P-new")
        r.push(S, udp(b"new-s", sport=7), None)     # diverges too, in the new epoch
        r.qemu("RESUME")
        await r.ctl.close()
        return r

    r = asyncio.run(scenario())
    assert r.io.released == ["P-old"]               # P-new held for its own checkpoint
    assert r.seam.requesting                        # the flush did not swallow it
    assert r.ctl.counters.by_reason == {"payload-mismatch": 2}
    assert r.seam.counters.checkpoints_done == 1
    assert r.event_names() == ["checkpoint-request", "checkpoint-request", "checkpoint-done"]
    done = json.loads((tmp_path / "ev.jsonl").read_text().splitlines()[-1])
    assert (done["released"], done["dropped"]) == (1, 1)  # P-old; S-new (diverged)
